"""``ssr deploy``: roll the KServe InferenceService to the registry's champion by a canary."""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from ssr.cli import add_config_args, config_from_args
from ssr.cluster.inference_service import InferenceServices
from ssr.cluster.launcher import current_namespace
from ssr.errors import ConfigError
from ssr.tracking.store import require_store

log = logging.getLogger(__name__)

ROLLED_BACK = 4  # exit statuses (cf. ssr.cluster.canary.EXIT)
FAILED = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="roll the KServe InferenceService to the champion: canary, smoke test, promote",
        description="Pin the registry's champion (models:/<name>/<version>) in the "
        "InferenceService with canaryTrafficPercent, wait for the new revision, check the "
        "canary's /health and a prediction on a few test recordings, then promote it to 100 % "
        "or roll back the server and the registry's champion. A retry resumes what an earlier "
        "attempt started; a model already served at 100 % is left alone. Exit status: 0 "
        f"promoted (or nothing to do), {ROLLED_BACK} rolled back, {FAILED} the canary failed "
        "with no earlier revision to roll back to, 2 an error.",
    )
    add_config_args(parser)
    parser.add_argument("--name", default="ssr-emg", help="InferenceService (default: ssr-emg)")
    parser.add_argument("--namespace", "-n", default=None, help="default: the current one")
    parser.add_argument("--model-name", default=None, help="default: registry.model_name")
    parser.add_argument(
        "--version",
        default=None,
        help="the version this deploy is for (a pipeline run's): exit 4 if it was rolled back",
    )
    parser.add_argument("--canary-percent", type=int, default=10, help="default: %(default)s")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds for each wait (default: 900)"
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=float(os.environ.get("SSR_DEPLOY_POLL_SECONDS") or 5.0),
        help="seconds between reads (default: $SSR_DEPLOY_POLL_SECONDS or 5)",
    )
    parser.add_argument(
        "--test-dir", default=None, help="raw test recordings for the smoke test (data.test_dir)"
    )
    parser.add_argument("--smoke-count", type=int, default=4, help="recordings to predict")
    parser.add_argument("--url", default="", help="the canary's URL (e.g. a port-forward)")
    parser.add_argument("--dry-run", action="store_true", help="print the body, write nothing")
    parser.add_argument("--result-file", default=None, help="write the outcome here as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ssr.cluster.canary import Rollout, Settings
    from ssr.registry.register import connect, tracking_uri

    cfg = config_from_args(args)
    if not 0 < args.canary_percent < 100:
        raise ConfigError(f"--canary-percent must be between 1 and 99, got {args.canary_percent}")
    settings = Settings(
        name=args.name,
        model_name=args.model_name or cfg.registry.model_name,
        canary_percent=args.canary_percent,
        timeout=args.timeout,
        poll=args.poll,
        test_dir=args.test_dir or cfg.data.test_dir,
        smoke_count=args.smoke_count,
        url=args.url,
    )
    require_store(tracking_uri(cfg))  # a registry that is not there is named, not created
    client = connect(cfg)
    services = InferenceServices(args.namespace or current_namespace())
    outcome = Rollout(services, client, cfg, settings).run(args.version, dry_run=args.dry_run)
    if outcome.body is not None:
        print(json.dumps(outcome.body, indent=2))
    if args.result_file:
        result = {k: v for k, v in asdict(outcome).items() if k != "body"}
        Path(args.result_file).write_text(json.dumps(result, indent=2) + "\n")
    print(outcome.line())
    return outcome.exit_code

"""``ssr katib launch | delete | trial``: the hyper-parameter search on the cluster, as a Katib
Experiment whose trials run ``ssr train``'s code path (``ssr tune`` is the local search)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ssr.cluster.katib import (
    DEFAULT_DEADLINE_SECONDS,
    build_experiment,
    experiment_name,
    validate_experiment,
)
from ssr.cluster.katib_launcher import Experiments, launch
from ssr.cluster.katib_trial import run_trial as trial
from ssr.cluster.launcher import current_namespace
from ssr.cluster.node import fetch_config
from ssr.config import load_config
from ssr.fsutil import atomic_path
from ssr.tuning.space import load_space

log = logging.getLogger(__name__)


def _target(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--run-id", help="pipeline run id; the Experiment is named after it")
    who.add_argument("--name", help="the Experiment's name (instead of --run-id)")
    parser.add_argument("--namespace", "-n", default=None, help="default: the current one")


def _launch_parser(sub: argparse._SubParsersAction) -> None:
    launch = sub.add_parser(
        "launch",
        help="create (or re-attach to) the run's Experiment, wait, print the best values",
        description="Create the Katib Experiment of a run (TPE, median stopping), or attach "
        "to the one an earlier attempt created (a Failed one is recreated), print a line "
        "whenever its trials change, and end with the best trial's values as overrides. "
        "Training arguments (section.key=value overrides) follow `--`; data.processed_dir and "
        "--config-uri must be URIs the trial pods can read (s3://).",
    )
    _target(launch)
    launch.add_argument("--image", required=True, help="the training image the trials run")
    launch.add_argument("--space", required=True, help="search space YAML (as for ssr tune)")
    launch.add_argument("--trials", type=int, required=True, help="maxTrialCount")
    launch.add_argument("--parallel", type=int, default=2, help="trials at a time")
    launch.add_argument("--max-failed", type=int, default=None, help="failed trials that fail it")
    launch.add_argument("--config-uri", default="", help="config file the trials read (s3://)")
    launch.add_argument(
        "--deadline",
        type=int,
        default=DEFAULT_DEADLINE_SECONDS,
        help="seconds from the Experiment's creation until the search stops with its best "
        "trial so far; also each trial Job's activeDeadlineSeconds (default: %(default)s)",
    )
    launch.add_argument("--gpus", type=int, default=1, help="GPUs per trial")
    launch.add_argument("--gpu-resource", default="nvidia.com/gpu", help="GPU resource name")
    launch.add_argument("--cpu", default="4", help="CPU per trial (request = limit)")
    launch.add_argument("--memory", default="16Gi", help="memory per trial (request = limit)")
    launch.add_argument("--shm-size", default="8Gi", help="size of /dev/shm per trial")
    launch.add_argument(
        "--poll",
        type=float,
        default=float(os.environ.get("SSR_KATIB_POLL_SECONDS") or 30.0),
        help="seconds between checks (default: $SSR_KATIB_POLL_SECONDS or 30)",
    )
    launch.add_argument("--output", default="", help="write the best values here (JSON)")
    launch.add_argument("--dry-run", action="store_true", help="print the body, create nothing")
    launch.add_argument("train_args", nargs="*", metavar="-- section.key=value")
    launch.set_defaults(func=run_launch)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "katib",
        help="hyper-parameter search on the cluster as a Katib Experiment",
        description="The search of `ssr tune` on Kubernetes: a Katib v0.19 Experiment whose "
        "trials are Jobs running `ssr katib trial` (the code path of `ssr train`).",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _launch_parser(sub)

    delete = sub.add_parser("delete", help="delete a run's Experiment (absent is fine)")
    _target(delete)
    delete.add_argument("--wait", type=float, default=0.0, help="seconds to wait until gone")
    delete.set_defaults(func=run_delete)

    trial = sub.add_parser(
        "trial",
        help="what each trial runs: ssr train printing the metric lines Katib collects",
        description="Fetch --config-uri, train with ARGS (the trial's values among them) and "
        "print each epoch's validation metrics in the format of the Experiment's collector.",
    )
    trial.add_argument("--config-uri", default="")
    trial.add_argument("train_args", nargs="*", metavar="-- section.key=value")
    trial.set_defaults(func=run_trial)


def _name(args: argparse.Namespace) -> str:
    return str(args.name or experiment_name(args.run_id))


def _namespace(args: argparse.Namespace) -> str:
    return str(args.namespace or current_namespace())


def _body(args: argparse.Namespace) -> dict[str, Any]:
    """The Experiment, after the space is checked against the config the trials will load."""
    space = load_space(args.space)
    with tempfile.TemporaryDirectory() as tmp:
        config = fetch_config(args.config_uri, Path(tmp) / "c.yaml") if args.config_uri else None
        cfg = load_config(config, list(args.train_args))
    space.check_against(cfg, args.space)
    if space.baseline_trial:
        log.info("baseline_trial: Katib cannot queue a given trial; all trials are sampled")
    seed = cfg.training.seed if space.sampler_seed is None else space.sampler_seed
    return build_experiment(
        _name(args),
        _namespace(args),
        args.image,
        space,
        args.train_args,
        trials=args.trials,
        parallel=args.parallel,
        max_failed=args.max_failed,
        config_uri=args.config_uri,
        run_id=args.run_id or "",
        seed=seed,
        deadline_seconds=args.deadline,
        gpus=args.gpus,
        cpu=args.cpu,
        memory=args.memory,
        shm_size=args.shm_size,
        gpu_resource=args.gpu_resource,
    )


def run_launch(args: argparse.Namespace) -> int:
    body = _body(args)
    if args.dry_run:
        validate_experiment(body)
        print(json.dumps(body, indent=2))
        return 0
    result = launch(
        Experiments(body["metadata"]["namespace"]),
        body,
        deadline_seconds=args.deadline,
        poll=args.poll,
        sink=lambda line: print(line, flush=True),
    )
    print(f"best trial {result.trial}: {' '.join(result.overrides)}", flush=True)
    if args.output:
        with atomic_path(args.output) as tmp:
            tmp.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    name, namespace = _name(args), _namespace(args)
    if Experiments(namespace).delete(name, wait=args.wait):
        log.info("deleted Experiment %s/%s", namespace, name)
    else:
        log.info("no Experiment %s/%s", namespace, name)
    return 0


def run_trial(args: argparse.Namespace) -> int:
    sys.stdout.flush()
    return trial(args.train_args, args.config_uri)

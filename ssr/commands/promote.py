"""``ssr promote``: gate the challenger against the champion, move aliases, copy, roll back."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from ssr.cli import add_config_args, config_from_args
from ssr.errors import ConfigError, RegistryError
from ssr.tracking.store import require_store, wait_on_sqlite_locks

if TYPE_CHECKING:
    from ssr.registry.gate import SentenceGateDecision
    from ssr.registry.promote import PromotionResult

REJECTED = 3  # exit status when the gate rejects the candidate


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "promote",
        help="promote the challenger to champion if it passes the gate; --rollback; --from/--to",
        description="Score challenger and champion on the same test split "
        "(data.processed_dir), apply the gate (registry.min_accuracy, registry.margin, "
        "McNemar exact test at registry.p_value; for task sentences registry.max_wer and a "
        "paired bootstrap on WER) and move the champion alias if it passes. "
        "The decision is tagged on both versions. Exit status: 0 promoted (or nothing to do), "
        f"{REJECTED} the gate rejected the candidate (also with --dry-run), 2 an error.",
    )
    add_config_args(parser)
    parser.add_argument("--model-name", default=None, help="default: registry.model_name")
    parser.add_argument("--version", default=None, help="candidate version (default: challenger)")
    parser.add_argument("--dry-run", action="store_true", help="show the decision, change nothing")
    parser.add_argument(
        "--rollback", action="store_true", help="move champion back to the previous champion"
    )
    parser.add_argument(
        "--from",
        dest="source",
        default=None,
        help="copy this registered model's champion (or --version) ...",
    )
    parser.add_argument(
        "--to",
        dest="target",
        default=None,
        help="... into this registered model and make it champion there",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _sentence_rows(d: SentenceGateDecision) -> list[tuple[str, object]]:
    """The WER comparison of a ``task: sentences`` decision (lower is better)."""
    reduction = None if d.champion_wer is None else d.champion_wer - d.wer
    return [
        ("challenger WER", d.wer),
        ("champion WER", d.champion_wer),
        (
            "WER reduction (margin)",
            None if reduction is None else f"{reduction:+.4f} ({d.margin:.4f})",
        ),
        (
            "bootstrap p (threshold)",
            None if d.p_value is None else f"{d.p_value:.4g} ({d.p_threshold:g})",
        ),
        ("baseline WER", d.baseline_wer),
        ("baseline p", None if d.baseline_p_value is None else f"{d.baseline_p_value:.4g}"),
        ("maximum WER", d.max_wer),
        ("test", f"{d.test} on {d.n} utterances ({d.ref_words} words)"),
        ("reason", d.reason),
    ]


def format_result(result: PromotionResult) -> str:
    """A small table of the comparison and what happened."""
    from ssr.registry.gate import SentenceGateDecision  # not at the top: numpy and scipy

    prefix = "dry run: would " if result.dry_run else ""
    rows: list[tuple[str, object]] = [
        ("model", result.model_name),
        ("champion before", result.champion_before),
        ("candidate", result.candidate),
    ]
    if result.source:
        rows.append(("copied from", result.source))
    d = result.decision
    if isinstance(d, SentenceGateDecision):
        rows += _sentence_rows(d)
    elif d is not None:
        rows += [
            ("challenger accuracy", d.challenger_accuracy),
            ("champion accuracy", d.champion_accuracy),
            ("gain (margin)", None if d.gain is None else f"{d.gain:+.4f} ({d.margin:.4f})"),
            ("n01 challenger-only right", d.n01),
            ("n10 champion-only right", d.n10),
            (
                "McNemar p (threshold)",
                None if d.p_value is None else f"{d.p_value:.4g} ({d.p_threshold:g})",
            ),
            ("minimum accuracy", d.min_accuracy),
            ("reason", d.reason),
        ]
    rows.append(("champion after", result.champion_after))
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k:<{width}}  {_fmt(v)}" for k, v in rows]
    verb = {
        "promote": "promote",
        "reject": "keep the champion (rejected)",
        "noop": "do nothing",
        "rollback": "roll back",
        "copy": "copy and promote",
    }[result.action]
    return "\n".join([f"{prefix}{verb}", *lines])


def run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from ssr.registry.promote import promote, promote_across, rollback
    from ssr.registry.register import connect, tracking_uri

    cfg = config_from_args(args)
    if bool(args.source) != bool(args.target):
        raise ConfigError("--from and --to go together")
    if args.rollback and args.source:
        raise ConfigError("--rollback and --from/--to are separate operations")
    require_store(tracking_uri(cfg))  # a registry that is not there is named, not created
    wait_on_sqlite_locks()
    client = connect(cfg)
    try:
        if args.source:
            result = promote_across(
                cfg,
                client=client,
                source=args.source,
                target=args.target,
                version=args.version,
                dry_run=args.dry_run,
            )
        elif args.rollback:
            result = rollback(cfg, client=client, model_name=args.model_name, dry_run=args.dry_run)
        else:
            result = promote(
                cfg,
                client=client,
                model_name=args.model_name,
                version=args.version,
                dry_run=args.dry_run,
            )
    except MlflowException as exc:
        raise RegistryError(f"MLflow refused the operation: {exc.message}") from None
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print(format_result(result))
    return REJECTED if result.action == "reject" else 0

"""``ssr evaluate``: score a checkpoint on a split of the processed data set."""

from __future__ import annotations

import argparse

from ssr.cli import add_config_args, config_from_args
from ssr.tracking.base import open_tracker
from ssr.tracking.context import data_fingerprint
from ssr.tracking.lineage import EVALUATION, log_data, read_processed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a checkpoint: metrics.json, confusion_matrix.png, predictions.json",
        description="Evaluate CHECKPOINT on a split of data.processed_dir. The model is rebuilt "
        "from the config stored in the checkpoint.",
    )
    add_config_args(parser)
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (.pth)")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default: <training.output_dir>/evaluation/<split>)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ssr.evaluation import default_out_dir, evaluate
    from ssr.sentences.evaluation import SentenceEvalResult
    from ssr.storage import localize
    from ssr.training.checkpoint import load_checkpoint, stored_config

    cfg = config_from_args(args)
    state = load_checkpoint(args.checkpoint, cfg.storage)
    # the run is named after (and logs) the model evaluated: the checkpoint's, not the CLI's
    stored = stored_config(state, args.checkpoint)
    cfg = cfg.model_copy(update={"model": stored.model, "task": stored.task})
    # An s3:// data set is mirrored into the local cache (only changed objects are fetched);
    # the config, as logged, keeps the URI the user gave.
    data = str(localize(cfg.data.processed_dir, cfg.storage.cache_dir, cfg.storage))
    out = args.out or default_out_dir(cfg.training.output_dir, args.split)

    tracker = open_tracker(cfg, job="evaluate", fingerprint=data_fingerprint(data))
    log_data(tracker, read_processed(cfg.data.processed_dir, data, EVALUATION))
    status = "FAILED"
    try:
        result = evaluate(
            args.checkpoint,
            args.split,
            data,
            out,
            tracker=tracker,
            batch_size=cfg.training.batch_size,
            device=cfg.training.device,
            state=state,
        )
        status = "FINISHED"
    finally:
        tracker.finish(status)
    if isinstance(result, SentenceEvalResult):
        m = result.metrics()
        base = m.get("baseline")
        print(
            f"{args.split}: WER {result.wer:.4f}, CER {result.cer:.4f} (lexicon + LM), greedy "
            f"WER {m['greedy']['wer']:.4f}, CER {m['greedy']['cer']:.4f}"
            + (f"; baseline WER {base['wer']:.4f}" if base else "")
            + f" ({result.num_samples} utterances) -> {out}"
        )
        return 0
    print(
        f"{args.split}: accuracy {result.accuracy:.4f}, macro-F1 {result.macro_f1:.4f}, "
        f"loss {result.loss:.4f} ({result.num_samples} utterances) -> {out}"
    )
    return 0

"""Compile the training pipeline to YAML for ``kfp run create`` (``make pipeline``).

    python -m pipelines.compile --image registry.example.com/ssr:0.1.0 \\
        [--train-image registry.example.com/ssr:0.1.0-cuda] \\
        --gpu-type nvidia.com/gpu --gpus 1 --out build/ssr_pipeline.yaml

Every step runs in ``--image``; the train step runs in ``--train-image``, by default the CUDA
variant of ``--image`` (its tag with ``-cuda`` appended, as ``make image-cuda`` tags it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

LOCAL_REGISTRIES = ("localhost", "127.0.0.1", "[::1]")


def is_local_image(image: str) -> bool:
    """True for an image name a cluster's nodes cannot pull: ``localhost/...``,
    ``localhost:5000/...``, ``127.0.0.1[:port]/...``."""
    registry = image.split("/", 1)[0] if "/" in image else ""
    if registry.startswith("["):  # an IPv6 literal, maybe with a port
        host = registry.split("]", 1)[0] + "]"
    else:
        host = registry.rsplit(":", 1)[0]
    return host in LOCAL_REGISTRIES


def local_image_warnings(images: dict[str, str]) -> list[str]:
    """One warning per image that only this machine can pull."""
    return [
        f"warning: {what} {image} is a local name; cluster nodes cannot pull it. Push the "
        f"images and compile with IMAGE=<registry>/ssr:<version> (make push, make pipeline)."
        for what, image in images.items()
        if is_local_image(image)
    ]


def compile_pipeline(
    out: str | Path,
    image: str | None = None,
    gpu_type: str | None = None,
    gpus: int | str | None = None,
    train_image: str | None = None,
    tune_trials: int | None = None,
) -> Path:
    """Compile with the given images, GPU and search defaults; returns the YAML path.

    A value left out comes from the environment (``SSR_IMAGE``, ``SSR_TRAIN_IMAGE``,
    ``SSR_GPU_TYPE``, ``SSR_GPUS_PER_NODE``, ``SSR_TUNE_TRIALS``), else the defaults; the
    environment is left as it was. ``tune_trials`` is the default of the run parameter of the
    same name (0: no search unless a run asks for one).
    """
    if gpus is not None and not str(gpus).isdigit():
        raise ValueError(f"gpus must be a non-negative integer, got {gpus!r}")
    if tune_trials is not None and (isinstance(tune_trials, bool) or int(tune_trials) < 0):
        raise ValueError(f"tune_trials must be a non-negative integer, got {tune_trials!r}")
    settings = {
        "SSR_IMAGE": image,
        "SSR_TRAIN_IMAGE": train_image,
        "SSR_GPU_TYPE": gpu_type,
        "SSR_GPUS_PER_NODE": None if gpus is None else str(gpus),
        "SSR_TUNE_TRIALS": None if tune_trials is None else str(int(tune_trials)),
    }
    saved = {key: os.environ.get(key) for key in settings}
    try:
        for key, value in settings.items():
            if value:
                os.environ[key] = value
        # The image and GPU defaults are read when the modules are imported: (re)import them.
        for name in [m for m in sys.modules if m == "components" or m.startswith("components.")]:
            del sys.modules[name]
        sys.modules.pop("pipelines.training_pipeline", None)
        module = importlib.import_module("pipelines.training_pipeline")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    compiler.Compiler().compile(module.training_pipeline, str(tmp))
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=os.environ.get("SSR_IMAGE"), help="component image")
    parser.add_argument(
        "--train-image",
        default=os.environ.get("SSR_TRAIN_IMAGE") or None,
        help="image of the train step (default: the CUDA variant of --image, TAG-cuda)",
    )
    parser.add_argument("--gpu-type", default=None, help="accelerator type, e.g. nvidia.com/gpu")
    parser.add_argument(
        "--gpus", type=int, default=None, help="GPUs per training node (gpus_per_node)"
    )
    parser.add_argument(
        "--tune-trials",
        type=int,
        default=None,
        help="default of the run parameter tune_trials (0: no hyper-parameter search)",
    )
    parser.add_argument("--out", default="build/ssr_pipeline.yaml")
    args = parser.parse_args(argv)
    path = compile_pipeline(
        args.out, args.image, args.gpu_type, args.gpus, args.train_image, args.tune_trials
    )
    from components.image import SSR_IMAGE, SSR_TRAIN_IMAGE

    for line in local_image_warnings({"IMAGE": SSR_IMAGE, "TRAIN_IMAGE": SSR_TRAIN_IMAGE}):
        print(line, file=sys.stderr)
    if SSR_TRAIN_IMAGE == SSR_IMAGE and not args.train_image:
        print(
            f"warning: {SSR_IMAGE} has no CUDA variant name (pinned by digest?); the train step "
            "runs in it too. Give TRAIN_IMAGE (--train-image) for the CUDA image.",
            file=sys.stderr,
        )
    print(f"compiled {path} (steps: {SSR_IMAGE}; train: {SSR_TRAIN_IMAGE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

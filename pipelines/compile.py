"""Compile the training pipeline to YAML for ``kfp run create`` (``make pipeline``).

    python -m pipelines.compile --image registry.example.com/ssr:0.1.0 \\
        --gpu-type nvidia.com/gpu --gpus 1 --out build/ssr_pipeline.yaml
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path


def compile_pipeline(
    out: str | Path, image: str | None = None, gpu_type: str | None = None, gpus: int | None = None
) -> Path:
    """Compile with the given image and GPU defaults; returns the YAML path."""
    if image:
        os.environ["SSR_IMAGE"] = image
    if gpu_type:
        os.environ["SSR_GPU_TYPE"] = gpu_type
    if gpus is not None:
        os.environ["SSR_GPU_COUNT"] = str(gpus)
    # The image and GPU defaults are read when the modules are imported: (re)import them now.
    for name in [m for m in sys.modules if m == "components" or m.startswith("components.")]:
        del sys.modules[name]
    sys.modules.pop("pipelines.training_pipeline", None)
    module = importlib.import_module("pipelines.training_pipeline")
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
    parser.add_argument("--gpu-type", default=None, help="accelerator type, e.g. nvidia.com/gpu")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs for the training step")
    parser.add_argument("--out", default="build/ssr_pipeline.yaml")
    args = parser.parse_args(argv)
    path = compile_pipeline(args.out, args.image, args.gpu_type, args.gpus)
    print(f"compiled {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

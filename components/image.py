"""The container images the components run in, chosen when the pipeline is compiled.

``make pipeline IMAGE=registry.example.com/ssr:0.1.0`` exports ``SSR_IMAGE`` (every step) and,
when ``TRAIN_IMAGE`` is given, ``SSR_TRAIN_IMAGE`` (the training step) before compiling. Without
``SSR_TRAIN_IMAGE`` the training step runs in the CUDA variant of ``SSR_IMAGE``: the same name
with ``-cuda`` appended to the tag, as ``make image-cuda`` tags it.
"""

from __future__ import annotations

import os

DEFAULT_IMAGE = "localhost/ssr/ssr:0.1.0"
CUDA_SUFFIX = "-cuda"


def cuda_variant(image: str) -> str:
    """``name:tag`` -> ``name:tag-cuda`` (``name`` -> ``name:latest-cuda``); an image pinned by
    digest has no such variant, so it is returned unchanged."""
    if "@" in image:
        return image
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag (the colon, if any, belonged to a registry port)
        return f"{image}:latest{CUDA_SUFFIX}"
    return image if tag.endswith(CUDA_SUFFIX) else f"{image}{CUDA_SUFFIX}"


SSR_IMAGE: str = os.environ.get("SSR_IMAGE") or DEFAULT_IMAGE
SSR_TRAIN_IMAGE: str = os.environ.get("SSR_TRAIN_IMAGE") or cuda_variant(SSR_IMAGE)

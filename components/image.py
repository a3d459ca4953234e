"""The container image every component runs in, set once for the whole pipeline.

``make pipeline IMAGE=registry.example.com/ssr:0.1.0`` exports ``SSR_IMAGE`` before compiling.
"""

from __future__ import annotations

import os

DEFAULT_IMAGE = "localhost/ssr/ssr:0.1.0"
SSR_IMAGE: str = os.environ.get("SSR_IMAGE", DEFAULT_IMAGE)

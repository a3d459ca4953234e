"""The images of an MLflow run logged with ``log_image(key=..., step=...)``, read back."""

from __future__ import annotations

from typing import Any


def logged_images(client: Any, run_id: str) -> list[tuple[str, int]]:
    """Sorted ``(key, step)`` of each image (MLflow stores ``images/<key>+step+<n>+...png``,
    with ``/`` in the key written as ``~``, beside a compressed ``.webp`` copy)."""
    found = []
    for artifact in client.list_artifacts(run_id, "images"):
        name = artifact.path.rsplit("/", 1)[-1]
        if name.endswith(".png"):
            key, marker, step, *_ = name.split("+")
            assert marker == "step", name
            found.append((key.replace("~", "/"), int(step)))
    return sorted(found)

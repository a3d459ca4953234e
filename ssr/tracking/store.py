"""Opening a local MLflow store (``sqlite:///...``) safely, from one process or many.

MLflow creates and migrates the schema of a new SQLite store in every process that opens it;
several processes doing that at once (a sweep of ``ssr train`` runs) leave it half-migrated.
So opening a local store is serialised by a file lock beside the database, and every SQLite
connection waits for locks (``busy_timeout``) instead of failing with "database is locked".
A store that must already exist (registry reads, predictions) is never created by accident.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ssr.errors import TrackingError
from ssr.redact import redact

BUSY_TIMEOUT_MS = 120_000
_listening = False


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (query string dropped); None for others."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0])


def _wait_on_locks(dbapi_conn: Any, _record: Any) -> None:
    if isinstance(dbapi_conn, sqlite3.Connection):
        dbapi_conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def wait_on_sqlite_locks() -> None:
    """Make every SQLite connection of this process wait up to :data:`BUSY_TIMEOUT_MS` for a
    lock held by another process (SQLAlchemy pool ``connect`` event; installed once)."""
    global _listening
    if _listening:
        return
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    event.listen(Pool, "connect", _wait_on_locks)
    _listening = True


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<database>.lock`` beside a ``sqlite:///`` store (no-op for
    other stores and where ``fcntl`` is missing)."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def require_store(uri: str) -> None:
    """Refuse a ``sqlite:///`` store whose database file does not exist, naming the URI and the
    absolute path looked at (opening it would create an empty store and then find nothing)."""
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise TrackingError(
            f"{redact(uri)}: no MLflow database at {path.resolve()}; run from the folder that "
            "holds it or set MLFLOW_TRACKING_URI (e.g. sqlite:////abs/path/mlflow.db)"
        )


def open_client(uri: str, create: bool = True) -> Any:
    """An ``MlflowClient`` for ``uri`` (tracking and registry). For a local SQLite store the
    schema is created or migrated under :func:`store_lock`, and connections wait on locks;
    with ``create=False`` a missing database is a :class:`TrackingError`."""
    from mlflow.tracking import MlflowClient

    if sqlite_path(uri) is None:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    if not create:
        require_store(uri)
    wait_on_sqlite_locks()
    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)  # opens (creates, migrates) the tracking store
        client.search_registered_models(max_results=1)  # and the registry's tables
    return client


def safe_path(key: str) -> str:
    """An artifact sub-path from a key: ``val/confusion matrix`` -> ``val/confusion_matrix``."""
    parts = [re.sub(r"[^A-Za-z0-9_.-]+", "_", p) for p in key.split("/")]
    parts = [p for p in parts if p not in ("", ".", "..")]
    return "/".join(parts) or "item"


def local_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts of a ``sqlite:///`` store go beside the database file, not in ``./mlruns``
    of whatever folder the run happened to start in; None for other stores (server default)."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return None
    db = path.resolve()
    return (db.parent / "mlruns" / safe_path(experiment)).as_uri()


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment ``name`` (``client``: an ``MlflowClient``), created race-safe."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = local_artifact_location(str(client.tracking_uri), name)
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except Exception as exc:  # MlflowException; mlflow is imported only where a client is made
        if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
            raise
        return str(client.get_experiment_by_name(name).experiment_id)

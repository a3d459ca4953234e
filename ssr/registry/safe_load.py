"""Load only what this project logged: check a model's ``MLmodel`` before any of its code runs.

Loading an MLflow model executes code: a pickled ``python_model`` runs whatever its pickle
says, and a model logged as code runs its code file. So before loading, ``ssr predict``, the
gate and ``ssr serve`` read the model's ``MLmodel`` (for a remote URI that file alone is
downloaded first) and refuse anything but an ssr pyfunc logged as code:

* exactly one flavour, ``python_function``, with MLflow's models-from-code loader;
* no pickled ``python_model`` (refused without reading, let alone unpickling, the pickle);
* its code file is exactly :data:`MODEL_CODE`, the file ``ssr register`` logs;
* the artifacts the classifier reads (weights, model info, manifest) inside the model folder.

Only then is the whole model downloaded, checked again (the copy is what gets loaded) and
loaded. This keeps out models that are not ours; it does not make a hostile registry safe: the
``ssr`` code shipped with a model (``code/``) runs too. Load only from registries you trust.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import yaml

from ssr.errors import RegistryError
from ssr.redact import redact

# The pyfunc is logged as code (no pickled Python object): loading runs these lines.
MODEL_CODE = """\
import mlflow.models

from ssr.registry.pyfunc_model import EmgClassifier

mlflow.models.set_model(EmgClassifier())
"""
MODEL_CODE_FILE = "emg_classifier.py"
CODE_LOADER = "mlflow.pyfunc.loaders.code_model"
ARTIFACT_KEYS = ("weights", "model_info", "manifest")  # pyfunc_model.WEIGHTS, MODEL_INFO, MANIFEST
MLMODEL = "MLmodel"
_ALIAS_URI = re.compile(r"^models:/([^/@]+)@([^/@]+)/?$")


def is_local(uri: str) -> bool:
    """A folder on this machine (a plain path or a ``file:`` URI)."""
    return urlparse(uri).scheme in ("", "file")


def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    return Path(parsed.path if parsed.scheme == "file" else uri)


def _read_mlmodel(path: Path, source: str) -> dict[str, Any]:
    try:
        meta = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RegistryError(f"{source}: unreadable MLmodel ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("flavors"), dict):
        raise RegistryError(f"{source}: MLmodel has no flavors; not an MLflow model")
    return meta


def _relative(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    p = PurePosixPath(value.replace("\\", "/"))
    return not p.is_absolute() and ".." not in p.parts


def check_mlmodel(meta: dict[str, Any], source: str) -> str:
    """Refuse (:class:`RegistryError`) an ``MLmodel`` that is not an ssr pyfunc logged as code;
    return the code file's name inside the model folder."""
    flavors = meta["flavors"]
    if set(flavors) != {"python_function"}:
        raise RegistryError(
            f"{source}: flavours {sorted(flavors)}; an ssr model has exactly python_function "
            "(logged by `ssr register`). Not loaded"
        )
    pyfunc = flavors["python_function"]
    if not isinstance(pyfunc, dict):
        raise RegistryError(f"{source}: malformed python_function flavour. Not loaded")
    if "python_model" in pyfunc:
        raise RegistryError(
            f"{source}: the python_model is a pickle ({pyfunc['python_model']}); ssr loads only "
            "models it logged as code and refuses pickles without opening them. Not loaded"
        )
    loader = pyfunc.get("loader_module")
    if loader != CODE_LOADER:
        raise RegistryError(
            f"{source}: loader_module {loader!r}, not MLflow's models-from-code loader "
            f"({CODE_LOADER}); not an ssr model. Not loaded"
        )
    code_path = pyfunc.get("model_code_path")
    if not isinstance(code_path, str) or not code_path:
        raise RegistryError(f"{source}: no model_code_path; not a model logged as code. Not loaded")
    name = PurePosixPath(code_path.replace("\\", "/")).name
    if name != MODEL_CODE_FILE:
        raise RegistryError(
            f"{source}: model code {name!r}, ssr logs {MODEL_CODE_FILE!r}; not an ssr model. "
            "Not loaded"
        )
    _check_contents(pyfunc, source)
    return name


def _check_contents(pyfunc: dict[str, Any], source: str) -> None:
    """Refuse a python_function flavour without ssr's artifacts, or with an artifact or code
    folder outside the model folder."""
    artifacts = pyfunc.get("artifacts") or {}
    missing = [k for k in ARTIFACT_KEYS if k not in artifacts]
    if missing:
        raise RegistryError(f"{source}: artifacts {missing} missing; not an ssr model. Not loaded")
    for key, info in artifacts.items():
        rel = info.get("path") if isinstance(info, dict) else None
        if not _relative(rel):
            raise RegistryError(f"{source}: artifact {key} points outside the model ({rel!r})")
    code_dir = pyfunc.get("code")
    if code_dir is not None and not _relative(code_dir):
        raise RegistryError(f"{source}: code folder points outside the model ({code_dir!r})")


def check_code(text: str, source: str) -> None:
    """Refuse a model code file other than the one ``ssr register`` logs."""
    if text != MODEL_CODE:
        raise RegistryError(
            f"{source}: its model code differs from the code ssr logs "
            f"(ssr.registry.safe_load.MODEL_CODE); not loaded"
        )


def check_model_dir(path: str | Path, source: str | None = None) -> None:
    """Check a model folder on this machine (MLmodel and code file) before loading it."""
    root = Path(path)
    source = source or str(root)
    mlmodel = root / MLMODEL
    if not mlmodel.is_file():
        raise RegistryError(f"{source}: no MLmodel file; not an MLflow model folder")
    name = check_mlmodel(_read_mlmodel(mlmodel, source), source)
    code = root / name
    try:
        text = code.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{source}: model code {name} unreadable ({exc})") from None
    check_code(text, source)


def _download(uri: str, dst: Path) -> Path:
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except (MlflowException, OSError) as exc:
        raise RegistryError(f"{uri}: cannot download: {exc}") from None
    except Exception as exc:  # boto, requests: an unreachable store, missing credentials
        raise RegistryError(f"{uri}: cannot download ({type(exc).__name__}: {exc})") from None


def _where() -> str:
    """`` (tracking URI ...)``: which registry a lookup asked, credentials redacted."""
    import mlflow

    return f" (tracking URI {redact(mlflow.get_tracking_uri())})"


def resolve_alias(model_uri: str) -> str:
    """``models:/NAME@ALIAS`` -> ``models:/NAME/VERSION`` (so every download sees one version);
    other URIs unchanged."""
    match = _ALIAS_URI.match(model_uri)
    if not match:
        return model_uri
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, alias = match.groups()
    try:
        version = MlflowClient().get_model_version_by_alias(name, alias).version
    except MlflowException as exc:
        raise RegistryError(f"{model_uri}: {exc.message}{_where()}") from None
    except Exception as exc:  # an unreachable server
        raise RegistryError(
            f"{model_uri}: cannot resolve ({type(exc).__name__}: {exc}){_where()}"
        ) from None
    return f"models:/{name}/{version}"


def artifact_location(model_uri: str) -> str:
    """Where a ``models:/`` URI's files are (registered version, alias or logged model id), so
    that every download reads the same version; other URIs unchanged."""
    if not model_uri.startswith("models:/"):
        return model_uri
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

    try:
        return str(ModelsArtifactRepository.get_underlying_uri(model_uri))
    except MlflowException as exc:
        raise RegistryError(f"{model_uri}: {exc.message}{_where()}") from None
    except Exception as exc:  # an unreachable server
        raise RegistryError(
            f"{model_uri}: cannot resolve ({type(exc).__name__}: {exc}){_where()}"
        ) from None


def _cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def fetch_checked(model_uri: str, dst: str | Path | None = None) -> Path:
    """A checked local copy of ``model_uri`` (or the folder itself when it is local).

    A ``models:/`` URI is resolved to its artifact location once. A remote model's ``MLmodel``
    and code file are downloaded and checked first; only then the whole model, into ``dst``
    (default: a temporary folder removed at exit), which is checked again. Raises
    :class:`RegistryError` for anything :func:`check_mlmodel` refuses.
    """
    location = artifact_location(model_uri)
    if is_local(location):
        path = _local_path(location)
        if not path.is_dir():
            raise RegistryError(f"{model_uri}: no such model folder")
        check_model_dir(path, model_uri)
        return path
    base = location.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="ssr-mlmodel-") as tmp:
        name = check_mlmodel(
            _read_mlmodel(_download(f"{base}/{MLMODEL}", Path(tmp)), model_uri), model_uri
        )
        code = _download(f"{base}/{name}", Path(tmp))
        check_code(code.read_text(), model_uri)
    if dst is None:
        target = Path(tempfile.mkdtemp(prefix="ssr-model-"))
        atexit.register(_cleanup, target)
    else:
        target = Path(dst)
        if target.exists() and any(target.iterdir()):
            raise RegistryError(f"{target}: not empty; the model is downloaded into a new folder")
    local = _download(base, target)
    check_model_dir(local, model_uri)
    return local


def load_checked(model_uri: str, dst: str | Path | None = None) -> Any:
    """``mlflow.pyfunc.load_model`` of a model that passed :func:`fetch_checked`."""
    import mlflow.pyfunc

    local = fetch_checked(model_uri, dst)
    try:
        return mlflow.pyfunc.load_model(str(local))
    except Exception as exc:  # MlflowException, import errors of the shipped code
        raise RegistryError(f"{model_uri}: cannot load model: {exc}") from None

"""The search space of ``ssr tune``: a YAML file of config keys and the values each may take.

Every entry is checked before any trial runs, so a typo or an impossible range is one error
line naming the file and the key, not a study that fails trial by trial::

    params:
      training.learning_rate: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}
      model.hidden_size: {type: categorical, choices: [64, 128]}
      model.num_layers: {type: int, low: 1, high: 3}

Keys are config keys of the ``model`` and ``training`` sections (``training.augment.*``
included); each range's ends and each choice must be valid values of the config the study
starts from. Optional sections set the sampler and the pruner (see :class:`SearchSpace`).
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from ssr.config import Config, config_from_dict
from ssr.errors import ConfigError
from ssr.yaml_io import set_dotted, yaml_load

if TYPE_CHECKING:
    from optuna.trial import BaseTrial

Kind = Literal["float", "int", "categorical"]
Scalar = str | int | float | bool | None

KINDS = ("float", "int", "log", "categorical")  # log: a float sampled on a log scale
# keys a trial sets itself (its own folders and run) or that cannot vary per trial
STUDY_KEYS = {
    "training.checkpoint_dir": "each trial writes its own folder under the study's",
    "training.output_dir": "each trial writes its own folder under the study's",
    "training.run_id": "each trial is its own run",
}
OTHER_SECTIONS = {
    "data": "the data is preprocessed once, before the study: it cannot vary per trial",
    "decoding": "decoding does not change the training or its validation metric",
    "tracking": "tracking does not change the training",
    "storage": "storage does not change the training",
    "registry": "the registry does not change the training",
}
# optional top-level sections: field -> (default, minimum; None: a boolean)
SECTIONS: dict[str, dict[str, tuple[Any, int | None]]] = {
    "sampler": {"startup_trials": (4, 0), "seed": (None, 0)},
    "pruner": {"enabled": (True, None), "startup_trials": (2, 0), "warmup_epochs": (5, 0)},
}
TOP_LEVEL = ("params", "baseline_trial", *SECTIONS)


@dataclass(frozen=True)
class Param:
    """One tuned config key and the values it may take."""

    key: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Scalar, ...] = ()

    def suggest(self, trial: BaseTrial) -> Scalar:
        """The trial's value for this key, drawn by the study's sampler."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            low, high, step = int(self.low), int(self.high), int(self.step or 1)
            return trial.suggest_int(self.key, low, high, step=step, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one the sampler could draw (for the baseline trial)."""
        if self.kind == "categorical":
            return any(type(value) is type(c) and value == c for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        assert self.low is not None and self.high is not None
        if not self.low <= value <= self.high:
            return False
        if self.step:
            steps = (value - self.low) / self.step
            return math.isclose(steps, round(steps), abs_tol=1e-9)
        return self.kind == "float" or isinstance(value, int)

    def describe(self) -> str:
        """A short text for logs: ``float [0.0003, 0.003] log`` or ``categorical [64, 128]``."""
        if self.kind == "categorical":
            return f"categorical {list(self.choices)}"
        extra = (" log" if self.log else "") + (f" step {self.step:g}" if self.step else "")
        return f"{self.kind} [{self.low:g}, {self.high:g}]{extra}"


@dataclass(frozen=True)
class SearchSpace:
    """The tuned keys plus the study's settings.

    ``sampler_startup_trials``: random trials before TPE models the results (Optuna's default
    of 10 would leave a short study random). ``pruner_startup_trials``: complete trials before
    any trial is pruned; ``warmup_epochs``: epochs every trial runs before it may be pruned.
    ``baseline_trial``: the first trial runs the config's own values, so the study's best is
    never worse on the validation sessions than the config it started from.
    """

    params: tuple[Param, ...]
    sampler_startup_trials: int = 4
    sampler_seed: int | None = None  # None: training.seed
    pruning: bool = True
    pruner_startup_trials: int = 2
    warmup_epochs: int = 5
    baseline_trial: bool = True

    def suggest(self, trial: BaseTrial) -> dict[str, Scalar]:
        """The trial's value for every key, as config overrides (``{key: value}``)."""
        return {p.key: p.suggest(trial) for p in self.params}

    def as_dict(self) -> dict[str, Any]:
        """A plain, comparable form: stored with the study and logged with its parent run."""
        out = {k: v for k, v in asdict(self).items() if k != "params"}
        out["params"] = {
            p.key: {k: list(v) if k == "choices" else v for k, v in asdict(p).items() if k != "key"}
            for p in self.params
        }
        return out

    def baseline(self, cfg: Config) -> tuple[dict[str, Scalar] | None, str]:
        """The config's own values of the tuned keys, or None and the key that lies outside."""
        flat = cfg.flat()
        for p in self.params:
            if not p.contains(flat[p.key]):
                return None, f"{p.key}={flat[p.key]!r} lies outside {p.describe()}"
        return {p.key: flat[p.key] for p in self.params}, ""

    def check_against(self, cfg: Config, source: str) -> None:
        """Refuse a range end or choice that is not a valid value of ``cfg``'s key (its type,
        its bounds, or a rule across keys such as hidden_size divisible by num_heads)."""
        raw = cfg.model_dump()
        for p in self.params:
            values: list[Any] = list(p.choices) if p.kind == "categorical" else [p.low, p.high]
            if p.kind == "int":
                values = [int(v) for v in values if v is not None]
            for value in values:
                trial = copy.deepcopy(raw)
                set_dotted(trial, p.key, value)
                try:
                    config_from_dict(trial, source)
                except ConfigError as exc:
                    problem = str(exc).splitlines()[0].split(": ", 2)[-1]
                    raise ConfigError(
                        f"{source}: params.{p.key}: {value!r} is not a valid value with this "
                        f"config: {problem}"
                    ) from None


def _number(value: Any, where: str, integer: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected {'an integer' if integer else 'a number'}")
    if integer and not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return value


def _range(key: str, spec: Mapping[str, Any], where: str, kind: Kind) -> Param:
    integer = kind == "int"
    for field in ("low", "high"):
        if field not in spec:
            raise ConfigError(f"{where}: {kind} needs low and high")
    low = _number(spec["low"], f"{where}.low", integer)
    high = _number(spec["high"], f"{where}.high", integer)
    if not low < high:
        raise ConfigError(
            f"{where}: low must be below high (got {low!r} and {high!r}); a fixed value belongs "
            "in the config or an override"
        )
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false")
    step = spec.get("step")
    if step is not None:
        step = _number(step, f"{where}.step", integer)
        if step <= 0:
            raise ConfigError(f"{where}.step: must be positive")
        if log:
            raise ConfigError(f"{where}: step and log cannot be combined")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0 (got {low!r})")
    if not integer:
        low, high = float(low), float(high)
        step = None if step is None else float(step)
    return Param(key, kind, low, high, log, step)


def _tunable(key: Any, where: str, known: set[str]) -> None:
    """Refuse a key that is not in the config, or that a trial cannot (or must not) vary."""
    if not isinstance(key, str) or key not in known:
        close = difflib.get_close_matches(str(key), sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{where}: not a config key{hint}")
    section = key.split(".")[0]
    why = STUDY_KEYS.get(key) or OTHER_SECTIONS.get(section)
    if why is None and section not in ("model", "training"):
        why = "only model.* and training.* keys are tuned"
    if why:
        raise ConfigError(f"{where}: cannot be tuned: {why}")


def _choices(key: str, spec: Mapping[str, Any], where: str) -> Param:
    choices = spec.get("choices")
    if not isinstance(choices, list) or len(choices) < 2:
        raise ConfigError(f"{where}.choices: expected a list of at least two values")
    for choice in choices:
        if not isinstance(choice, (str, int, float, bool, type(None))):
            raise ConfigError(f"{where}.choices: {choice!r} is not a plain value")
    if len({(type(c), c) for c in choices}) != len(choices):
        raise ConfigError(f"{where}.choices: a value is listed twice")
    return Param(key, "categorical", choices=tuple(choices))


def _param(key: Any, spec: Any, source: str, known: set[str]) -> Param:
    where = f"{source}: params.{key}"
    _tunable(key, where, known)
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{type: float, low: 0, high: 1}}")
    kind = spec.get("type")
    if kind not in KINDS:
        raise ConfigError(f"{where}.type: expected one of {', '.join(KINDS)}, got {kind!r}")
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "step"}
    allowed |= {"log"} if kind in ("float", "int") else set()
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} for type {kind}")
    if kind == "categorical":
        return _choices(key, spec, where)
    if kind == "log":
        return _range(key, {**spec, "log": True}, where, "float")
    return _range(key, spec, where, kind)


def _section(raw: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    fields = SECTIONS[name]
    given = raw.get(name) or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{source}: {name}: expected a mapping")
    out = {}
    for field, (default, minimum) in fields.items():
        value = given.get(field, default)
        where = f"{source}: {name}.{field}"
        if minimum is None and not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
        bad = isinstance(value, bool) or not isinstance(value, int) or value < (minimum or 0)
        if minimum is not None and value is not None and bad:
            raise ConfigError(f"{where}: expected an integer >= {minimum}")
        out[field] = value
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: {name}.{unknown[0]}: unknown key")
    return out


def parse_space(raw: Any, source: str = "<space>") -> SearchSpace:
    """Validate a parsed space file into a :class:`SearchSpace` (one error naming the key)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping with a params section")
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: unknown key (expected {', '.join(TOP_LEVEL)})")
    params = raw.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{source}: params: expected a mapping of config keys to ranges")
    known = set(Config().flat())
    baseline = raw.get("baseline_trial", True)
    if not isinstance(baseline, bool):
        raise ConfigError(f"{source}: baseline_trial: expected true or false")
    sampler = _section(raw, "sampler", source)
    pruner = _section(raw, "pruner", source)
    return SearchSpace(
        params=tuple(_param(key, spec, source, known) for key, spec in params.items()),
        sampler_startup_trials=sampler["startup_trials"],
        sampler_seed=sampler["seed"],
        pruning=pruner["enabled"],
        pruner_startup_trials=pruner["startup_trials"],
        warmup_epochs=pruner["warmup_epochs"],
        baseline_trial=baseline,
    )


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file."""
    source = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: search space file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        raw = yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_space(raw, source)

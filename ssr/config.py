"""Typed, validated configuration loaded from YAML plus ``section.key=value`` overrides.

The defaults here are the embedded defaults: they equal ``configs/training_config.yaml``
(the seed's values), so every command also works without a config file. One file on purpose
(a little over 350 lines): every section's keys, defaults and checks in one place is what the
project points to as the single source of defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ssr.errors import ConfigError
from ssr.yaml_io import flatten, format_validation, parse_override, set_dotted, yaml_load

__all__ = ["flatten", "parse_override", "yaml_load"]


class _Section(BaseModel):
    # strict: no guessing (``true`` is not a batch size, ``"3"`` is not a number); ints are
    # still accepted where a float is expected.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False
    )


class ModelConfig(_Section):
    """The model (seed: ``model`` section): ``arch`` picks a registered architecture
    (:func:`ssr.model.register_architecture`), the other keys describe it."""

    arch: str = Field(
        "transformer",
        pattern=r"^[a-z][a-z0-9_]*$",
        description="registered model architecture (ssr.model.ARCHITECTURES)",
    )
    num_channels: int = Field(8, ge=1)
    input_size: int = Field(128, ge=1)
    hidden_size: int = Field(256, ge=1)
    num_heads: int = Field(8, ge=1)
    num_layers: int = Field(6, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    max_frames: int = Field(
        1024, ge=1, description="longest utterance, in frames, the model accepts"
    )
    readout: Literal["segments", "mean"] = Field(
        "segments",
        description="segments: pool at relative-time points of the active region (keeps the "
        "order of events); mean: one mean over all frames (order-blind)",
    )
    segments: int = Field(4, ge=1, le=64, description="readout points for readout=segments")
    subsample: int = Field(
        1,
        ge=1,
        le=8,
        description="time stride of the CTC architectures' convolutional front-end (output "
        "frames = input frames / subsample); the word classifier ignores it",
    )
    centring: Literal["electrode", "band"] = Field(
        "band",
        description="what each utterance's mean log power is removed over: electrode (one "
        "offset per electrode: the session gain) or band (one per electrode and band: also the "
        "spectral shape, which moves between sessions)",
    )

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        return self


class DataConfig(_Section):
    """Raw data location and preprocessing (seed: ``data`` section plus filters)."""

    train_dir: str = "data/train"
    val_dir: str = "data/val"
    test_dir: str = "data/test"
    format: Literal["auto", "native", "gaddy"] = "auto"
    processed_dir: str = "data/processed"
    sampling_rate: int = Field(1000, gt=0)
    window_size: int = Field(256, ge=2)
    hop_length: int = Field(128, ge=1)
    powerline_freq: float = Field(60.0, gt=0)
    notch_harmonics: int = Field(3, ge=0, description="notched multiples of powerline_freq")
    notch_q: float = Field(30.0, gt=0)
    bandpass_low: float = Field(20.0, gt=0)
    bandpass_high: float = Field(450.0, gt=0)
    filter_order: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.hop_length > self.window_size:
            raise ValueError(
                f"hop_length ({self.hop_length}) must not exceed window_size ({self.window_size})"
            )
        nyquist = self.sampling_rate / 2
        if not self.bandpass_low < self.bandpass_high < nyquist:
            raise ValueError(
                f"need bandpass_low < bandpass_high < sampling_rate/2, got {self.bandpass_low}, "
                f"{self.bandpass_high}, {nyquist}"
            )
        return self


class AugmentConfig(_Section):
    """Training-time augmentation mimicking session changes (see :mod:`ssr.training.augment`)."""

    enabled: bool = True
    gain_std: float = Field(0.3, ge=0, description="per-electrode log-power offset, std")
    shift: float = Field(0.75, ge=0, lt=1, description="max fraction of a neighbour mixed in")
    electrode_shift: float = Field(
        0.5, ge=0, le=1, description="probability of moving the array by one whole electrode"
    )
    channel_dropout: float = Field(
        0.1, ge=0, lt=1, description="probability of flattening each electrode (lost contact)"
    )
    spectral_warp: float = Field(
        0.2, ge=0, lt=1, description="band axis resampled by 1 +- this (spectral peak moves)"
    )
    stretch: float = Field(0.15, ge=0, lt=1, description="speaking-rate change, +- fraction")
    time_shift: int = Field(2, ge=0, description="max frames the utterance is rolled by")
    time_masks: int = Field(1, ge=0, description="masked time spans per utterance")
    time_mask_frames: int = Field(2, ge=0, description="max frames per time mask")
    freq_masks: int = Field(2, ge=0, description="masked band spans per utterance")
    freq_mask_bands: int = Field(8, ge=0, description="max bands per frequency mask")
    noise_std: float = Field(0.1, ge=0, description="Gaussian noise on the log powers, std")


class TrainingConfig(_Section):
    """Optimisation, checkpoints and logging cadence (seed: ``training`` section)."""

    num_epochs: int = Field(100, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(0.001, gt=0)
    weight_decay: float = Field(0.0001, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(5.0, gt=0)
    num_workers: int = Field(4, ge=0)
    log_interval: int = Field(10, ge=1)
    save_interval: int = Field(5, ge=1)
    viz_interval: int = Field(1, ge=1)
    patience: int = Field(10, ge=1)
    checkpoint_dir: str = "checkpoints"
    output_dir: str = "outputs"
    lr_factor: float = Field(0.5, gt=0, lt=1)
    lr_patience: int = Field(5, ge=0)
    seed: int = Field(
        42,
        ge=0,
        lt=2**63,
        description="seeds python, numpy and torch; torch takes 64 bits and the loaders add "
        "small offsets, numpy refuses negative seeds, so 0 <= seed < 2**63",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 on a CUDA GPU that supports it, else fp16 with a gradient "
        "scaler; fp32 on CPU",
    )
    compile: bool = False
    dist_timeout_s: int = Field(
        900,
        ge=1,
        description="DDP: a collective (or joining the process group) that waits longer than "
        "this on a stuck rank fails the job instead of hanging",
    )
    io_timeout_s: int = Field(
        3600,
        ge=1,
        description="DDP: how long the other ranks wait for rank 0's checkpoint upload, plots "
        "and tracking calls at the end of an epoch",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    run_id: str | None = Field(
        None,
        description="the pipeline run this training belongs to; stored in every checkpoint so "
        "--resume refuses another run's checkpoint",
    )


class DecodingConfig(_Section):
    """``task: sentences``: CTC decoding with a lexicon and a word n-gram language model built
    from the training transcripts plus ``lm_text`` (see :mod:`ssr.sentences.decoding`)."""

    lm_text: str | None = Field(
        None,
        description="extra text (one sentence or word per line, local or s3://) for the lexicon "
        "and the language model; the training transcripts are always used",
    )
    lm_order: int = Field(3, ge=1, le=6, description="n-gram order of the word language model")
    beam_size: int = Field(64, ge=1, description="hypotheses kept per frame")
    beam_threshold: float = Field(25.0, gt=0, description="drop hypotheses this far below the best")
    lm_weight: float = Field(1.0, ge=0, description="weight of the language model's log10 score")
    word_score: float = Field(0.0, description="bonus added per emitted word")


class MlflowConfig(_Section):
    enabled: bool = True
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "ssr-emg"
    required: bool = Field(
        False,
        description="fail the job when MLflow cannot be reached as it starts, or when logged "
        "calls are still lost at its end; off: an unreachable MLflow is an error line in the "
        "log and the job goes on",
    )


class WandbConfig(_Section):
    enabled: bool = True
    project: str = "ssr-emg"
    entity: str | None = None
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    dir: str = "."
    group: str | None = Field(
        None,
        description="W&B run group (wandb.init(group=...)): the runs of one study or pipeline "
        "run side by side in the UI; null: no group",
    )


class TrackingConfig(_Section):
    """Experiment tracking to MLflow and Weights & Biases."""

    run_name: str | None = None
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)


class StorageConfig(_Section):
    """Object storage (S3 API) used for any ``s3://`` path."""

    endpoint_url: str | None = None
    region: str | None = None
    max_attempts: int = Field(10, ge=1)  # botocore standard mode: ~13 s of backoff in all
    multipart_threshold_mb: int = Field(64, ge=5)
    cache_dir: str = Field(".cache/ssr", description="local mirror of s3:// data directories")


class RegistryConfig(_Section):
    """MLflow Model Registry and the promotion gate."""

    model_name: str = "ssr-emg"
    min_accuracy: float = Field(0.5, ge=0, le=1)
    margin: float = Field(0.0, ge=0, le=1)
    p_value: float = Field(0.05, gt=0, le=1)
    baseline_margin: float | None = Field(
        0.0,
        ge=0,
        le=1,
        description="required test-accuracy gain over the strong linear baseline (ssr.baseline); "
        "null skips the baseline check",
    )
    max_wer: float = Field(
        0.5, gt=0, le=1, description="task sentences: a challenger above this test WER is refused"
    )
    log_pytorch_model: bool = Field(
        True, description="also log the network in MLflow's PyTorch flavour (torch.export pt2)"
    )


class Config(_Section):
    """The whole configuration."""

    task: Literal["words", "sentences"] = Field(
        "words",
        description="words: one class per utterance; sentences: open-vocabulary transcripts "
        "(CTC over characters, lexicon and language model)",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)

    @model_validator(mode="after")
    def _cross_section(self) -> Config:
        bins = self.data.window_size // 2
        if self.model.input_size > bins or bins % self.model.input_size:
            raise ValueError(
                f"model.input_size ({self.model.input_size}) must divide data.window_size/2 "
                f"({bins}): the spectral features pool the STFT bins into input_size bands"
            )
        return self

    def flat(self) -> dict[str, Any]:
        """The config as ``{"section.key": value}``, e.g. for experiment-tracking params."""
        return flatten(self.model_dump())


# Model keys added after models were first saved, with what their absence means in a stored
# config (a checkpoint or registered model from before the key existed): the model it was.
ABSENT_MODEL_KEYS: dict[str, Any] = {"arch": "transformer", "centring": "electrode"}


def stored_model_section(model: dict[str, Any]) -> dict[str, Any]:
    """A stored ``model`` section with the keys it predates filled in as they behaved then."""
    return {**ABSENT_MODEL_KEYS, **model}


def config_from_dict(raw: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a plain dict into a :class:`Config`, naming the offending keys on error."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation(exc, source)) from None


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
) -> Config:
    """Load a YAML config (or the embedded defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
        try:
            loaded = yaml_load(text)
        except yaml.YAMLError as exc:
            first = " ".join(str(exc).split())
            raise ConfigError(f"{source}: not valid YAML: {first}") from None
        if loaded is None:
            raise ConfigError(
                f"{source}: empty config file (leave out --config for the embedded defaults)"
            )
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
        raw = loaded
    for text in overrides or []:
        key, value = parse_override(text)
        set_dotted(raw, key, value)
    if overrides:
        source += " (with overrides)"
    return config_from_dict(raw, source)


def dump_config(cfg: Config) -> str:
    """The config as YAML text."""
    return yaml.safe_dump(cfg.model_dump(), sort_keys=False)

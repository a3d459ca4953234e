"""Exceptions that the CLI turns into a one-line error and a non-zero exit."""

from __future__ import annotations


class SSRError(Exception):
    """Base class for errors a user can act on (bad input, bad config, missing files)."""


class ConfigError(SSRError):
    """The configuration is invalid: unknown key, wrong type or impossible value."""


class DataError(SSRError):
    """An input data file or split is unusable; the message names the file and the problem."""


class CheckpointError(SSRError):
    """A checkpoint is missing, truncated, corrupt or not loadable safely."""


class StorageError(SSRError):
    """Object storage failed permanently (after retries) or a URI is malformed."""


class TrackingError(SSRError):
    """Experiment tracking could not be set up as configured."""


class RegistryError(SSRError):
    """The model registry refused an operation (unknown model, alias, version)."""

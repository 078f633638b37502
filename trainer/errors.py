"""The exceptions imgcls raises, in one place.

Code inside imgcls raises one of these with a message a user can act on: what happened,
which file or value, and how to fix it. The CLI (``trainer.cli``) maps them to exit codes
once, at the edge; the service maps them to HTTP statuses the same way.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "ConfigError",
    "DataError",
    "ExportError",
    "ImgclsError",
    "ModelError",
    "QualityGateError",
    "WeightsNotFoundError",
    "describe_error",
]


def describe_error(exc: BaseException) -> str:
    """``Type: message``, first line only: an unexpected exception (from torch, a runtime, a
    decoder) summed up for a log line or a user-facing message, without its traceback."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


class ImgclsError(Exception):
    """Base class: an error whose message is meant for the user, not a stack trace."""

    exit_code = 1


class ConfigError(ImgclsError):
    """A training config or CLI override is invalid (unknown field, wrong type, bad value)."""

    exit_code = 2


class DataError(ImgclsError):
    """The dataset cannot be used as given: empty folders, one class, a malformed CSV, too few images."""

    exit_code = 2


class ModelError(ImgclsError):
    """An unknown model name, or a model that cannot be built for this input."""

    exit_code = 2


class WeightsNotFoundError(ModelError):
    """Pretrained weights were asked for but are neither in a given file nor in the local caches."""


class ExportError(ImgclsError):
    """Exporting failed: an artifact could not be written, or it disagrees with the eager model."""

    exit_code = 1


class QualityGateError(ImgclsError):
    """A trained model fails ``export.min_test_accuracy``, or is no better than the baselines while it is set."""

    exit_code = 2


class BundleError(ImgclsError):
    """A model bundle is missing, malformed, or its files do not match their recorded checksums."""

    exit_code = 2

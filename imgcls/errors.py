"""The exceptions imgcls raises, in one place.

Code inside imgcls raises one of these with a message a user can act on: what happened,
which file or value, and how to fix it. The command line (``imgcls.cli``) maps them to exit codes
once, at the edge; the service maps them to HTTP statuses the same way (``service.errors``).
:func:`describe_validation_errors` is the one way a pydantic validation error becomes such a message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "BundleError",
    "ConfigError",
    "DataError",
    "ExportError",
    "ImgclsError",
    "MissingExtraError",
    "ModelError",
    "ModelNotFoundError",
    "QualityGateError",
    "WeightsNotFoundError",
    "describe_error",
    "describe_labels",
    "describe_validation_errors",
    "dotted_location",
]


def describe_error(exc: BaseException) -> str:
    """``Type: message``, first line only: an unexpected exception (from torch, a runtime, a
    decoder) summed up for a log line or a user-facing message, without its traceback."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def describe_labels(labels: Sequence[str], limit: int = 20) -> str:
    """A model's labels for a message that names the valid ones: the first ``limit``, then ``...``."""
    return ", ".join(labels[:limit]) + (" ..." if len(labels) > limit else "")


def dotted_location(loc: tuple[int | str, ...]) -> str:
    """pydantic's location tuple as ``section.field`` (``(top level)`` when empty)."""
    return ".".join(str(part) for part in loc) or "(top level)"


def describe_validation_errors(
    errors: Iterable[Mapping[str, Any]],
    *,
    name: Callable[[tuple[int | str, ...]], str] = dotted_location,
    with_input: bool = True,
    first_only: bool = False,
) -> str:
    """pydantic's ``exc.errors()`` as ``where: what (got value); ...``, the form every message about an
    invalid config, manifest, setting or request body takes.

    ``name`` turns a location into what the user wrote (a config key, a flag, an environment variable);
    ``with_input`` adds the rejected value; ``first_only`` keeps the first problem (HTTP answers).
    An unknown field reads ``unknown field``: pydantic's "Extra inputs are not permitted" says less.
    """
    problems = []
    for err in errors:
        what = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid value")
        if with_input and err.get("type") != "extra_forbidden" and "input" in err:
            what += f" (got {err['input']!r})"
        problems.append(f"{name(tuple(err.get('loc', ())))}: {what}")
        if first_only:
            break
    return "; ".join(problems) or "invalid value"


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


class ModelNotFoundError(ImgclsError):
    """No model of that name, or no such version of it, in the model repository."""

    exit_code = 2


class MissingExtraError(ImgclsError):
    """A command needs libraries of an extra that is not installed (``pip install "imgcls[train]"``)."""

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

"""The service's exceptions. Routes translate them to HTTP statuses in one place (``service.app``)."""

from __future__ import annotations

from trainer.errors import BundleError, ImgclsError

__all__ = [
    "BadInputError",
    "BundleError",
    "ClientDisconnectedError",
    "DeadlineExceededError",
    "ImgclsError",
    "InferenceFailedError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "PayloadTooLargeError",
    "QueueFullError",
    "RuntimeUnavailableError",
    "ServiceError",
    "UnsupportedMediaTypeError",
]


class ServiceError(ImgclsError):
    """Base for errors answered to a client; ``status`` is the HTTP status code."""

    status = 500
    retry_after_s: int | None = None


class BadInputError(ServiceError):
    """The request is malformed: undecodable image, wrong shape or datatype, too many images."""

    status = 400


class ModelNotFoundError(ServiceError):
    status = 404


class PayloadTooLargeError(ServiceError):
    status = 413


class UnsupportedMediaTypeError(ServiceError):
    status = 415


class QueueFullError(ServiceError):
    """The batcher's queue has no room for the request's images; the client should retry later."""

    status = 503
    retry_after_s = 1


class ModelNotReadyError(ServiceError):
    status = 503
    retry_after_s = 5


class DeadlineExceededError(ServiceError):
    """The request's deadline passed while its images were still queued."""

    status = 504


class ClientDisconnectedError(ServiceError):
    """The client hung up while its images were queued; nobody reads this answer (499, as nginx logs it)."""

    status = 499


class InferenceFailedError(ServiceError):
    """The runtime raised while computing a batch; every request in that batch gets this."""

    status = 500


class RuntimeUnavailableError(ImgclsError):
    """A runtime cannot run here (no CUDA, no torch_tensorrt, no artifact of that format)."""

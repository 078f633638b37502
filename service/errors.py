"""The service's exceptions. Routes translate them to HTTP statuses in one place (``service.app``)."""

from __future__ import annotations

from starlette.responses import JSONResponse

from imgcls import errors
from imgcls.errors import BundleError, ImgclsError

__all__ = [
    "BadInputError",
    "BundleError",
    "ClientDisconnectedError",
    "DeadlineExceededError",
    "ImgclsError",
    "InferenceFailedError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "NotExplainableError",
    "PayloadTooLargeError",
    "QueueFullError",
    "RuntimeUnavailableError",
    "ServiceError",
    "UnsupportedMediaTypeError",
    "error_response",
    "service_error_response",
]


class ServiceError(ImgclsError):
    """Base for errors answered to a client; ``status`` is the HTTP status code."""

    status = 500
    retry_after_s: int | None = None
    reject_reason: str | None = None  # the imgcls_rejected_total reason label, for refusals we count


class BadInputError(ServiceError):
    """The request is malformed: undecodable image, wrong shape or datatype, too many images."""

    status = 400
    reject_reason = "bad_input"


class ModelNotFoundError(ServiceError, errors.ModelNotFoundError):
    """No such model or version here: the repository's lookup, answered with 404."""

    status = 404


class PayloadTooLargeError(ServiceError):
    status = 413
    reject_reason = "too_large"


class UnsupportedMediaTypeError(ServiceError):
    status = 415
    reject_reason = "bad_input"


class QueueFullError(ServiceError):
    """The model holds ``max_queue_size`` unanswered images already (decoding, queued or computing), or is
    shutting down; the client should retry later."""

    status = 503
    retry_after_s = 1
    reject_reason = "queue_full"


class ModelNotReadyError(ServiceError):
    status = 503
    retry_after_s = 5


class DeadlineExceededError(ServiceError):
    """The request's deadline passed before its answer was ready (waiting for decode, decoding, queued
    or computing); its images not yet started are never decoded or computed."""

    status = 504
    reject_reason = "deadline"


class ClientDisconnectedError(ServiceError):
    """The client hung up before its answer was ready; nobody reads this answer (499, as nginx logs it)."""

    status = 499


class InferenceFailedError(ServiceError):
    """The runtime raised while computing a batch; every request in that batch gets this."""

    status = 500


class NotExplainableError(ServiceError):
    """This model version cannot be explained here: its bundle carries no eager weights, the server
    lacks the ``explain`` extra, or explanations are switched off. Retrying cannot help (501)."""

    status = 501


class RuntimeUnavailableError(ImgclsError):
    """A runtime cannot run here (no CUDA, no torch_tensorrt, no artifact of that format)."""


def error_response(
    status: int, message: str, retry_after_s: int | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """``{"error": message}``: every error body the service sends, from routes and middleware alike."""
    headers = dict(headers or {})
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def service_error_response(exc: ServiceError) -> JSONResponse:
    return error_response(exc.status, str(exc), exc.retry_after_s)

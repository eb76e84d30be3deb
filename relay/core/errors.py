"""The error tree: every failure relay reports over HTTP, with its status and stable code.

    RelayError                          500 internal_error
      ClientError                       4xx
        BadRequestError                 400 invalid_request
        UnauthorizedError               401 unauthorized
        NotFoundError                   404 not_found
        ConflictError                   409 (code per case)
        PayloadTooLargeError            413 payload_too_large
        UnsupportedMediaTypeError       415 unsupported_media_type
      NotConfiguredError                503 not_configured
      StoreUnavailableError             503 store_unavailable
      UpstreamError                     502 upstream_error (Attesto failed)
        UpstreamUnavailableError        503 attesto_unavailable
        UpstreamTimeoutError            504 attesto_timeout

Handlers raise; `middlewares.request_middleware` is the one place that turns these
into the JSON envelope `{"error": {"code", "message", "details"?}}`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RelayError(Exception):
    """Base of every error relay maps to an HTTP answer."""

    status: ClassVar[int] = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None,
                 details: dict[str, Any] | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details
        self.retry_after_s = retry_after_s


class ClientError(RelayError):
    """The caller sent something relay will not accept; retrying the same is useless."""

    status = 400
    code = "invalid_request"


class BadRequestError(ClientError):
    """Malformed or invalid request body or parameters."""


class UnauthorizedError(ClientError):
    """Missing or wrong credentials or signature."""

    status = 401
    code = "unauthorized"


class NotFoundError(ClientError):
    """The named resource does not exist."""

    status = 404
    code = "not_found"


class ConflictError(ClientError):
    """The request conflicts with stored state."""

    status = 409
    code = "conflict"


class RequestTimeoutError(ClientError):
    """The body did not arrive within `[server] header_timeout_s`."""

    status = 408
    code = "request_timeout"


class RateLimitedError(ClientError):
    """This caller (service key or end user) spent its `[limits]` budget; retry later."""

    status = 429
    code = "rate_limited"


class PayloadTooLargeError(ClientError):
    """The body is over `[server] max_body_bytes`."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(ClientError):
    """The body is not JSON."""

    status = 415
    code = "unsupported_media_type"


class NotConfiguredError(RelayError):
    """A credential this feature needs is missing; it fails closed."""

    status = 503
    code = "not_configured"


class StoreUnavailableError(RelayError):
    """The database could not commit (locked, disk full, gone); the caller should retry."""

    status = 503
    code = "store_unavailable"


class UpstreamError(RelayError):
    """Attesto answered with an error relay does not turn into a verdict."""

    status = 502
    code = "upstream_error"


class UpstreamUnavailableError(UpstreamError):
    """Attesto could not be reached, or is rate limiting / open circuit."""

    status = 503
    code = "attesto_unavailable"


class UpstreamTimeoutError(UpstreamError):
    """Attesto did not answer in `[attesto] timeout_s`."""

    status = 504
    code = "attesto_timeout"

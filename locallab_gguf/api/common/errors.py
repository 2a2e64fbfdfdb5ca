"""The one table from our errors to HTTP statuses, and the handlers that apply it.

Every error answer is `{"detail": "<what happened and what to do>"}`.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from locallab_gguf.api.common.middleware.access import bearer_challenge, rate_limit_headers
from locallab_gguf.errors import (
    AdminKeyRequired,
    ClientDisconnected,
    ConfigError,
    CustomModelsRefused,
    DownloadBudgetExceeded,
    DownloadRefused,
    EngineFailure,
    EngineRestarting,
    HubAccessDenied,
    HubError,
    HubNotFound,
    HubUnreachable,
    InvalidRequest,
    LoadCancelled,
    LoadInProgress,
    LocalLabError,
    ModelFilePackaged,
    ModelLoadFailed,
    ModelLoading,
    ModelNotCached,
    ModelNotFound,
    ModelNotResident,
    ModelTooLarge,
    ModelUnavailable,
    NoModelLoaded,
    NoRoomForModel,
    NotAuthenticated,
    NotEnoughDisk,
    Overloaded,
    PromptTooLong,
    RateLimited,
    RateLimitStoreUnavailable,
    RequestTimedOut,
    RpcProtocolMismatch,
    RpcWorkerUnavailable,
)

log = logging.getLogger(__name__)

# Hub failures: 404 when the hub has no such repo, revision or file (fix the id); 403, not
# 401, when the hub refuses the server's token (the client's own credentials are not at
# fault); 502 when the hub answered badly or a transfer broke off; 504 when it did not answer.
STATUS_OF: dict[type[LocalLabError], int] = {
    InvalidRequest: 400,
    NotAuthenticated: 401,
    CustomModelsRefused: 403,
    AdminKeyRequired: 403,
    DownloadRefused: 403,
    HubAccessDenied: 403,
    ModelNotFound: 404,
    HubNotFound: 404,
    # Offline and not on this machine: not found here, as Ollama says of a model not pulled
    # (the message says to pull it); nothing on the server failed.
    ModelNotCached: 404,
    RequestTimedOut: 408,
    LoadInProgress: 409,
    ModelFilePackaged: 409,
    PromptTooLong: 413,
    RateLimited: 429,
    # nginx's "client closed request": nobody reads it, but logs and metrics tell it from a 500.
    ClientDisconnected: 499,
    ConfigError: 500,
    ModelUnavailable: 500,
    ModelLoadFailed: 500,
    EngineFailure: 500,
    HubError: 502,
    # A worker that answers in another protocol: the server in front of it got a bad answer.
    RpcProtocolMismatch: 502,
    NoModelLoaded: 503,
    ModelNotResident: 503,
    NoRoomForModel: 503,
    Overloaded: 503,
    EngineRestarting: 503,
    RateLimitStoreUnavailable: 503,
    LoadCancelled: 503,
    # Unreachable now, or serving another client: the model can load once the worker is free.
    RpcWorkerUnavailable: 503,
    HubUnreachable: 504,
    NotEnoughDisk: 507,
    # A budget the operator set rather than the disk: still "the server cannot store it"
    # (nothing in the request was wrong, so no 4xx), refused before the transfer starts.
    DownloadBudgetExceeded: 507,
    ModelTooLarge: 507,
}


def status_of(error: LocalLabError) -> int:
    for cls in type(error).__mro__:
        status = STATUS_OF.get(cls)
        if status is not None:
            return status
    return HTTP_500_INTERNAL_SERVER_ERROR


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """Every error answer outside the surfaces that have their own shape."""

    detail: str
    retry_after: int | None = None  # seconds, with a 429


def error_response(
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
    retry_after: int | None = None,
) -> Response[ErrorBody]:
    return Response(ErrorBody(detail, retry_after), status_code=status, headers=headers)


def error_headers(error: LocalLabError) -> dict[str, str] | None:
    """What tells a client when to retry, or how to authenticate."""
    if isinstance(
        error,
        Overloaded
        | RateLimitStoreUnavailable
        | EngineRestarting
        | ModelLoading
        | ModelNotResident
        | NoRoomForModel,
    ):
        return {"Retry-After": str(error.retry_after)}
    if isinstance(error, RateLimited):
        return {
            **rate_limit_headers(error.limit, 0, error.retry_after, error.policy),
            "Retry-After": str(error.retry_after),
        }
    if isinstance(error, NotAuthenticated):
        return {"WWW-Authenticate": bearer_challenge(key_sent=error.key_sent)}
    return None


def handle_domain_error(_: Request[Any, Any, Any], error: LocalLabError) -> Response[ErrorBody]:
    retry_after = error.retry_after if isinstance(error, RateLimited) else None
    return error_response(status_of(error), str(error), error_headers(error), retry_after)


def handle_validation_error(
    _: Request[Any, Any, Any], error: ValidationException
) -> Response[ErrorBody]:
    return error_response(400, validation_detail(error))


def handle_http_error(request: Request[Any, Any, Any], error: HTTPException) -> Response[ErrorBody]:
    return error_response(error.status_code, http_error_detail(request, error), error.headers)


def http_error_detail(request: Request[Any, Any, Any], error: HTTPException) -> str:
    if error.status_code == 404 and error.detail == "Not Found":
        return f"no such endpoint: {request.method} {request.url.path}; the API is at /schema"
    if error.status_code == 405:
        return f"{request.method} is not allowed on {request.url.path}"
    if error.status_code == 413:
        return "the request body is larger than the server accepts (--max-body-bytes)"
    return error.detail


def validation_detail(error: ValidationException) -> str:
    """'temperature: Expected `float` <= 2.0' rather than a generic 'Validation failed'."""
    parts = [f"{key}: {message}" if key else message for key, message in validation_problems(error)]
    if parts:
        return "; ".join(parts)
    return error.detail or "the request body is not valid JSON for this endpoint"


def validation_problems(error: ValidationException) -> list[tuple[str | None, str]]:
    """(field, message) for each problem; the field is None for the body as a whole."""
    problems = error.extra if isinstance(error.extra, list) else []
    found: list[tuple[str | None, str]] = []
    for problem in problems:
        if not isinstance(problem, dict):
            continue
        key = problem.get("key")
        # Litestar names the whole body by the handler's parameter, `data`.
        field = str(key) if key and key != "data" else None
        message = str(problem.get("message", ""))
        if key == "data" and message == "'data'":  # Litestar's KeyError: no body was sent
            message = "the request body is missing; send a JSON object"
        found.append((field, message))
    return found


def report_unexpected(request: Request[Any, Any, Any], error: Exception) -> str:
    """Log a failure no table entry covers (a bug) and say what the client may know of it."""
    # Litestar logs nothing here (the CLI owns logging), so a bug would vanish without this.
    log.error("%s %s failed", request.method, request.url.path, exc_info=error)
    return f"the server failed: {type(error).__name__}; see the server log"


def handle_unexpected(request: Request[Any, Any, Any], error: Exception) -> Response[ErrorBody]:
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, report_unexpected(request, error))


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    LocalLabError: handle_domain_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_error,
    Exception: handle_unexpected,
}

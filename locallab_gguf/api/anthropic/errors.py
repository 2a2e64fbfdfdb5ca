"""Errors under /v1/messages in Anthropic's shape: `{"type": "error", "error": {"type",
"message"}}`. Statuses are the rest of the API's, except that "try again later" (503) is
Anthropic's 529 overloaded_error, which its SDKs retry."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from locallab_gguf.api.anthropic.wire import ErrorBody, ErrorDetail
from locallab_gguf.api.common.errors import (
    error_headers,
    http_error_detail,
    report_unexpected,
    status_of,
    validation_detail,
)
from locallab_gguf.errors import LocalLabError

OVERLOADED = 529
_TYPE_OF_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    OVERLOADED: "overloaded_error",
}


def anthropic_error(
    status: int, message: str, headers: dict[str, str] | None = None
) -> Response[ErrorBody]:
    if status == 503:
        status = OVERLOADED
    kind = _TYPE_OF_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = ErrorBody(ErrorDetail(type=kind, message=message))
    return Response(body, status_code=status, headers=headers)


def handle_domain_error(_: Request[Any, Any, Any], error: LocalLabError) -> Response[ErrorBody]:
    return anthropic_error(status_of(error), str(error), error_headers(error))


def handle_validation_error(
    _: Request[Any, Any, Any], error: ValidationException
) -> Response[ErrorBody]:
    return anthropic_error(400, validation_detail(error))


def handle_http_error(request: Request[Any, Any, Any], error: HTTPException) -> Response[ErrorBody]:
    return anthropic_error(error.status_code, http_error_detail(request, error), error.headers)


def handle_unexpected(request: Request[Any, Any, Any], error: Exception) -> Response[ErrorBody]:
    return anthropic_error(500, report_unexpected(request, error))


ANTHROPIC_EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    LocalLabError: handle_domain_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_error,
    Exception: handle_unexpected,
}

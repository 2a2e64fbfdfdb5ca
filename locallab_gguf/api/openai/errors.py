"""Errors under /v1 in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

The statuses and headers are those of the rest of the API (`api.errors.STATUS_OF`); only the
body differs, so that OpenAI's SDKs raise their usual exceptions with our message.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from locallab_gguf.api.common.errors import (
    error_headers,
    http_error_detail,
    report_unexpected,
    status_of,
    validation_detail,
    validation_problems,
)
from locallab_gguf.api.openai.wire import ErrorBody, ErrorDetail
from locallab_gguf.errors import (
    LocalLabError,
    ModelNotFound,
    NotAuthenticated,
    PromptTooLong,
    RateLimited,
    UnsupportedParameter,
)

_TYPE_OF_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[ErrorBody]:
    kind = "server_error" if status >= 500 else _TYPE_OF_STATUS.get(status, "invalid_request_error")
    body = ErrorBody(ErrorDetail(message=message, type=kind, param=param, code=code))
    return Response(body, status_code=status, headers=headers)


def handle_domain_error(_: Request[Any, Any, Any], error: LocalLabError) -> Response[ErrorBody]:
    param, code = _param_and_code(error)
    return openai_error(
        status_of(error), str(error), param=param, code=code, headers=error_headers(error)
    )


def handle_validation_error(
    _: Request[Any, Any, Any], error: ValidationException
) -> Response[ErrorBody]:
    problems = validation_problems(error)
    param = problems[0][0] if problems else None
    return openai_error(400, validation_detail(error), param=param)


def handle_http_error(request: Request[Any, Any, Any], error: HTTPException) -> Response[ErrorBody]:
    detail = http_error_detail(request, error)
    return openai_error(error.status_code, detail, headers=error.headers)


def handle_unexpected(request: Request[Any, Any, Any], error: Exception) -> Response[ErrorBody]:
    return openai_error(500, report_unexpected(request, error))


def _param_and_code(error: LocalLabError) -> tuple[str | None, str | None]:
    if isinstance(error, UnsupportedParameter):
        return error.param, "unsupported_parameter"
    if isinstance(error, ModelNotFound):
        return "model", "model_not_found"
    if isinstance(error, PromptTooLong):
        return None, "context_length_exceeded"
    if isinstance(error, RateLimited):
        return None, "rate_limit_exceeded"
    if isinstance(error, NotAuthenticated):
        return None, "invalid_api_key"
    return None, None


OPENAI_EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    LocalLabError: handle_domain_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_error,
    Exception: handle_unexpected,
}

"""Errors under /api in Ollama's shape: `{"error": "<message>"}`, with the statuses and headers
of the rest of the API (`common.errors.STATUS_OF`)."""

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
)
from locallab_gguf.api.ollama.wire import ErrorBody
from locallab_gguf.errors import LocalLabError


def ollama_error(
    status: int, message: str, headers: dict[str, str] | None = None
) -> Response[ErrorBody]:
    return Response(ErrorBody(error=message), status_code=status, headers=headers)


def handle_domain_error(_: Request[Any, Any, Any], error: LocalLabError) -> Response[ErrorBody]:
    return ollama_error(status_of(error), str(error), error_headers(error))


def handle_validation_error(
    _: Request[Any, Any, Any], error: ValidationException
) -> Response[ErrorBody]:
    return ollama_error(400, validation_detail(error))


def handle_http_error(request: Request[Any, Any, Any], error: HTTPException) -> Response[ErrorBody]:
    return ollama_error(error.status_code, http_error_detail(request, error), error.headers)


def handle_unexpected(request: Request[Any, Any, Any], error: Exception) -> Response[ErrorBody]:
    return ollama_error(500, report_unexpected(request, error))


OLLAMA_EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    LocalLabError: handle_domain_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_error,
    Exception: handle_unexpected,
}

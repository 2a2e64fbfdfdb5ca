"""GET / (the chat page) and GET /ui/{file} (its scripts, styles and vendored libraries)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

from locallab_gguf.api.common.middleware.access import PUBLIC, UNLIMITED
from locallab_gguf.api.ui.assets import INDEX, Asset, load_assets

# Model output is Markdown rendered into the page; should a sanitizer ever let markup through,
# the browser still runs no script but the page's own files: no inline script, no event
# handler attributes, no eval, and HTML may reach the DOM only through the sanitizer's
# Trusted Types policy ('dompurify'). Images load only from here or data: URLs, so a reply
# cannot make the browser call out to another host.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types dompurify",
    ]
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load (a 304 when unchanged), so an upgraded server's page is
    # never mixed with a cached older script.
    "Cache-Control": "no-cache",
}


def ui_router() -> Router:
    """The page's routes, open without an API key and outside the rate limit: loading the
    page costs no request of the client's budget, and a page that needs a key must load to
    ask for it. Its API calls are counted and checked like any client's."""
    assets = load_assets()

    @get("/", include_in_schema=False)
    async def chat_page(request: Request[Any, Any, Any]) -> Response[bytes]:
        return _answer(assets[INDEX], request)

    @get("/ui/{name:path}", include_in_schema=False)
    async def page_file(name: FromPath[str], request: Request[Any, Any, Any]) -> Response[bytes]:
        asset = assets.get(name.lstrip("/"))  # a path parameter keeps its leading slash
        if asset is None:
            raise NotFoundException(f"the chat page has no file {name.lstrip('/')!r}")
        return _answer(asset, request)

    return Router(
        path="/", route_handlers=[chat_page, page_file], opt={PUBLIC: True, UNLIMITED: True}
    )


def _answer(asset: Asset, request: Request[Any, Any, Any]) -> Response[bytes]:
    headers = {**_HEADERS, "ETag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(b"", status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)

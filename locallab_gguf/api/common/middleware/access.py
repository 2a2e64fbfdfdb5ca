"""Who may call the API, and how often: thin adapters from ASGI to ApiKeys and RateLimiter.

The rate limiter sits outside the key check, so a client guessing keys is limited (by its
address) like any other. Routes marked `opt={UNLIMITED: True}` (/health, /metrics) pass the
rate limit, routes marked `opt={PUBLIC: True}` (/health) pass the key check, and OPTIONS
requests pass both; browsers' CORS preflights are answered before either runs. Routes marked
`opt={ADMIN: True}` (load, unload, pull, delete) need an admin key when keys are set; the
role of a request's key is kept in its scope for what a route does on demand (`role_of`).
"""

from __future__ import annotations

import logging

from litestar.config.cors import CORSConfig
from litestar.datastructures import Headers, MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from locallab_gguf.api.common.middleware.client_address import TrustedProxies, parse_address
from locallab_gguf.api.common.middleware.keys import (
    ApiKeys,
    Role,
    exposed_without_key,
    load_api_keys,
)
from locallab_gguf.errors import AdminKeyRequired, RateLimited
from locallab_gguf.ratelimit import Clock, RateLimiter, rate_limiter_for
from locallab_gguf.settings import Settings

log = logging.getLogger(__name__)

PUBLIC = "public"
# A management route: only an admin key may call it (when the server has keys at all).
ADMIN = "admin"
MAX_USER_NAME = 128
_CLIENT_KEY = "locallab_gguf.client"
_ROLE_KEY = "locallab_gguf.role"
# A scraper polls /metrics on a schedule of its own; counting it would eat a client's budget.
UNLIMITED = "unlimited"

# Sent to browsers' scripts under CORS, which otherwise hide every header but a few.
EXPOSED_HEADERS = [
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
    "Retry-After",
]


def rate_limit_headers(limit: int, remaining: int, reset: int, policy: str) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(remaining),
        "RateLimit-Reset": str(reset),
        "RateLimit-Policy": policy,
    }


def credential(headers: Headers) -> str | None:
    """The key a request presents: `Authorization: Bearer <key>`, or Anthropic's
    `x-api-key: <key>` (its SDKs send that instead), as an Authorization value."""
    authorization = headers.get("authorization")
    if authorization is not None:
        return authorization
    api_key = headers.get("x-api-key")
    return None if api_key is None else f"Bearer {api_key}"


def bearer_challenge(*, key_sent: bool) -> str:
    # RFC 6750: a rejected token is "invalid_token"; a missing one gets the bare challenge.
    realm = 'Bearer realm="locallab-gguf"'
    return f'{realm}, error="invalid_token"' if key_sent else realm


class ClientIdentity:
    """Names a request's client: the API key it sent (a digest, never the key), else its
    address. The rate limit counts per name; the access log shows it.

    With `user_header` (--client-id-header), a front-end serving many users (Open WebUI's
    X-OpenWebUI-User-Id) names each of them: the header is believed from a trusted proxy or
    with an accepted key, and each user it names is a client of their own. From anyone else
    it is ignored, or any client could buy a fresh budget by making up a name.
    """

    def __init__(
        self, keys: ApiKeys, proxies: TrustedProxies, user_header: str | None = None
    ) -> None:
        self.keys = keys
        self.proxies = proxies
        self.user_header = user_header

    def of(self, scope: Scope) -> str:
        # Named once per request: the access log and the rate limit both ask.
        state = scope["state"]
        name = state.get(_CLIENT_KEY)
        if name is None:
            name = state[_CLIENT_KEY] = self._identify(scope)
        return str(name)

    def _identify(self, scope: Scope) -> str:
        headers = Headers.from_scope(scope)
        # Only a key the server accepts names a client; any other would buy a fresh budget.
        key = self.keys.identify(credential(headers))
        client = scope.get("client")
        peer = client[0] if client else None
        if key is not None:
            return f"key:{key}" + self._user(headers, believed=True)
        forwarded = ", ".join(headers.getall("forwarded", [])) or None
        x_forwarded_for = ", ".join(headers.getall("x-forwarded-for", [])) or None
        address = self.proxies.client_address(peer, forwarded, x_forwarded_for)
        peer_address = parse_address(peer) if peer else None
        from_proxy = peer_address is not None and self.proxies.trusts(peer_address)
        return "ip:" + address + self._user(headers, believed=from_proxy)

    def _user(self, headers: Headers, *, believed: bool) -> str:
        """`/user:<name>` when the request names a user the server may believe."""
        if self.user_header is None or not believed:
            return ""
        user = headers.get(self.user_header, "").strip()
        if not user:
            return ""
        # Bounded: a name is a rate-limit key and appears in the access log.
        return "/user:" + user[:MAX_USER_NAME]


class RateLimitMiddleware(ASGIMiddleware):
    """Counts each request against its client: the API key it sent, else its address."""

    scopes = (ScopeType.HTTP,)
    exclude_opt_key = UNLIMITED

    def __init__(self, limiter: RateLimiter, clients: ClientIdentity) -> None:
        self.limiter = limiter
        self.clients = clients

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if scope.get("method") == "OPTIONS":
            await next_app(scope, receive, send)
            return
        decision = await self.limiter.hit(self.clients.of(scope))
        if decision is None:  # the store is unreachable and the server fails open
            await next_app(scope, receive, send)
            return
        if not decision.allowed:
            raise RateLimited(
                decision.limit, decision.window.seconds, decision.retry_after, decision.policy
            )
        limits = rate_limit_headers(
            decision.limit, decision.remaining, decision.reset, decision.policy
        )

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableScopeHeaders.from_message(message).update(limits)
            await send(message)

        await next_app(scope, receive, send_with_limits)


class ApiKeyMiddleware(ASGIMiddleware):
    """Refuses requests without a key the server accepts (401 with a Bearer challenge), and
    user keys on admin routes (403)."""

    scopes = (ScopeType.HTTP,)
    exclude_opt_key = PUBLIC

    def __init__(self, keys: ApiKeys) -> None:
        self.keys = keys

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if scope.get("method") != "OPTIONS":
            authorization = credential(Headers.from_scope(scope))
            self.keys.authenticate(authorization)
            role = self.keys.role_of(authorization)
            scope["state"][_ROLE_KEY] = role
            route = scope.get("route_handler")
            if role != "admin" and route is not None and route.opt.get(ADMIN):
                raise AdminKeyRequired(f"{scope.get('method')} {scope.get('path')}")
        await next_app(scope, receive, send)


def role_of(scope: Scope, keys: ApiKeys) -> Role:
    """The role of the key a request sent: admin when the server has no keys; user where no
    key was checked (a public route), so that nothing is allowed by mistake."""
    if not keys.required:
        return "admin"
    role: Role | None = scope["state"].get(_ROLE_KEY)
    return role if role is not None else "user"


class AccessControl:
    """The middleware, limiter and CORS policy that the settings ask for."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        keys = load_api_keys(settings.api_keys, settings.api_key_file)
        if exposed_without_key(settings.host, keys):
            log.warning(
                "listening on %s without an API key: anyone who can reach this address can "
                "use the server; set --api-key (or LOCALLAB_API_KEYS) to require one",
                settings.host,
            )
        if keys.required and not keys.has_admin:
            log.warning(
                "none of the API keys is an admin key, so no client can load, unload, pull or "
                "delete models over HTTP (POST /models/load, /models/unload, /api/pull, "
                "DELETE /api/delete); write a key as 'admin:KEY' to make it one"
            )
        self.keys = keys
        self.clients = ClientIdentity(keys, TrustedProxies(settings.trusted_proxies))
        if settings.client_id_header and not (settings.trusted_proxies or keys.required):
            log.warning(
                "--client-id-header %s is believed only from a --trusted-proxy or with an API "
                "key; with neither set it is ignored",
                settings.client_id_header,
            )
        self.clients = ClientIdentity(
            keys, TrustedProxies(settings.trusted_proxies), settings.client_id_header
        )
        self.limiter = rate_limiter_for(settings, clock)
        self.middleware: list[ASGIMiddleware] = []
        if self.limiter is not None:
            self.middleware.append(RateLimitMiddleware(self.limiter, self.clients))
        if keys.required:
            self.middleware.append(ApiKeyMiddleware(keys))
        self.cors = (
            CORSConfig(
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=[
                    "Authorization",
                    "Content-Type",
                    "x-api-key",
                    "anthropic-version",
                    "anthropic-beta",
                ],
                expose_headers=EXPOSED_HEADERS,
            )
            if settings.cors_origins
            else None
        )

    async def close(self) -> None:
        if self.limiter is not None:
            await self.limiter.close()

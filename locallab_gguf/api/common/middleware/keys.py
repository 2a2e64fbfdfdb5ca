"""API keys: which requests may use the server, in which role, and a stable name for each
key's client.

A key is a user key (generate, embed, tokenize, list) unless it is written `admin:KEY`, which
makes KEY an admin key (also load, unload, pull and delete models); `user:KEY` says the
default outright. Clients send KEY alone. Without any keys every request may do everything.

Keys are kept only as SHA-256 digests and compared in constant time; no key is ever
logged or sent anywhere. A client's identity for rate limiting is a prefix of its key's
digest, so the store (Redis included) never sees a key either.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from locallab_gguf.addresses import is_loopback
from locallab_gguf.errors import ConfigError, NotAuthenticated

Role = Literal["user", "admin"]
ROLE_PREFIXES: dict[str, Role] = {"admin:": "admin", "user:": "user"}


def key_and_role(entry: str) -> tuple[str, Role]:
    """'admin:KEY' -> (KEY, admin); 'user:KEY' or 'KEY' -> (KEY, user)."""
    for prefix, role in ROLE_PREFIXES.items():
        if entry.startswith(prefix):
            return entry[len(prefix) :].strip(), role
    return entry, "user"


class ApiKeys:
    """The keys a server accepts, each with its role; with none, every request is accepted
    (and may do everything)."""

    def __init__(self, keys: Iterable[str]) -> None:
        roles: dict[bytes, Role] = {}
        for entry in keys:
            key, role = key_and_role(entry)
            digest = _digest(key)
            # A key listed both ways is an admin key: the operator said so once.
            if roles.get(digest) != "admin":
                roles[digest] = role
        self._roles = roles
        self._digests = tuple(sorted(roles))

    @property
    def required(self) -> bool:
        return bool(self._digests)

    @property
    def has_admin(self) -> bool:
        return "admin" in self._roles.values()

    def identify(self, authorization: str | None) -> str | None:
        """A stable, non-secret name for the key in an Authorization header, or None when
        the header holds no key this server accepts."""
        match = self._match(authorization)
        return None if match is None else match.hex()[:16]

    def role_of(self, authorization: str | None) -> Role | None:
        """The role of the key in an Authorization header: admin for every request when no
        keys are set, None for a key this server does not accept."""
        if not self.required:
            return "admin"
        match = self._match(authorization)
        return None if match is None else self._roles[match]

    def _match(self, authorization: str | None) -> bytes | None:
        token = bearer_token(authorization)
        if token is None or not self._digests:
            return None
        sent = _digest(token)
        match = None
        # Every known key is compared, so the time taken says nothing about which matched.
        for known in self._digests:
            if hmac.compare_digest(sent, known):
                match = known
        return match

    def authenticate(self, authorization: str | None) -> None:
        """Raise NotAuthenticated unless keys are not required or the header holds one."""
        if self.required and self.identify(authorization) is None:
            raise NotAuthenticated(key_sent=authorization is not None)


def bearer_token(authorization: str | None) -> str | None:
    """The token of 'Bearer <token>' (the scheme is case-insensitive), else None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def load_api_keys(keys: Iterable[str], key_file: str | None) -> ApiKeys:
    """The keys given directly plus those in `key_file` (one per line, # for comments)."""
    every = list(keys)
    if key_file is not None:
        try:
            text = Path(key_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read the API key file {key_file}: {exc.strerror or exc}. "
                "Check the path given to --api-key-file."
            ) from exc
        for line in text.splitlines():
            key = line.split("#", 1)[0].strip()
            if key:
                every.append(key)
    for position, entry in enumerate(every, start=1):
        key, _ = key_and_role(entry)
        # A key is never echoed back, not even in an error: only where it sits is named.
        if not key or any(character.isspace() for character in key):
            raise ConfigError(
                f"API key number {position} is empty or contains whitespace; "
                "a key must be one word, such as the output of 'openssl rand -hex 32'"
            )
    return ApiKeys(every)


def exposed_without_key(host: str, keys: ApiKeys) -> bool:
    """True when the server listens beyond this machine and anyone may use it."""
    return not keys.required and not is_loopback(host)

"""Reasoning that leaves the server as `encrypted_content` and comes back in a later request.

With `store: false` nothing stays on the server, so the client carries the model's reasoning
to the next turn. It is sealed: the reasoning text, msgspec-encoded, followed by an HMAC-SHA256
of it under a secret of this server, all in URL-safe base64. The text is not hidden (the same
client received it in the clear as the reasoning item's content); the seal proves that this
server wrote it, so a client cannot put words into the model's own reasoning.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

import msgspec

from locallab_gguf.errors import UnsupportedParameter

_VERSION = 1
_MAC_BYTES = hashlib.sha256().digest_size


class SealedReasoning(msgspec.Struct, array_like=True, frozen=True):
    version: int
    text: str


class ReasoningSeal:
    """Seals and opens reasoning under `secret` (a new random one per server by default; the
    response store keeps its own, so sealed reasoning outlives a restart with persistence)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret or secrets.token_bytes(32)

    def seal(self, text: str) -> str:
        payload = msgspec.msgpack.encode(SealedReasoning(_VERSION, text))
        mac = hmac.new(self.secret, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(payload + mac).decode("ascii")

    def open(self, sealed: str, param: str) -> str:
        """The reasoning text; a 400 naming `param` when this server did not seal it."""
        try:
            raw = base64.urlsafe_b64decode(sealed.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raw = b""
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        expected = hmac.new(self.secret, payload, hashlib.sha256).digest()
        if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, expected):
            raise UnsupportedParameter(
                param,
                "this encrypted_content was not issued by this server, or was changed; send "
                "reasoning items back exactly as they came, or leave them out",
            )
        try:
            sealed_reasoning = msgspec.msgpack.decode(payload, type=SealedReasoning)
        except msgspec.DecodeError as exc:  # sealed by us, so only another version gets here
            raise UnsupportedParameter(param, "this encrypted_content has an unknown form") from exc
        return sealed_reasoning.text

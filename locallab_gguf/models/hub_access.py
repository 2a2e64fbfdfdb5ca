"""How this process reaches the Hugging Face hub: endpoint, token, offline."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from locallab_gguf.settings import Settings

DEFAULT_ENDPOINT = "https://huggingface.co"
# What huggingface_hub itself takes for "on" in its variables.
_TRUE = ("1", "ON", "YES", "TRUE")


class HubAccess(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach the hub; read from the settings and the environment once, at start."""

    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = None  # None: the token huggingface_hub finds itself (`hf auth login`)
    offline: bool = False
    timeout_seconds: float = 10.0

    def __repr__(self) -> str:  # never show the token
        return f"HubAccess(endpoint={self.endpoint!r}, offline={self.offline})"


def hub_access(settings: Settings, env: Mapping[str, str]) -> HubAccess:
    """The settings, then the Hugging Face variables: HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE."""
    return HubAccess(
        endpoint=(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
        token=settings.hf_token or env.get("HF_TOKEN") or None,
        offline=settings.offline or env.get("HF_HUB_OFFLINE", "").upper() in _TRUE,
    )

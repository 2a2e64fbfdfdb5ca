"""Byte counts as people read them."""

from __future__ import annotations

import re

_UNITS = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
# A size as people write it: 512MiB, 6GiB, 6G, 1000 (bytes); binary units, however spelled.
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])i?b?|b)?\s*$", re.IGNORECASE)
_SCALE = {unit[0].lower(): scale for unit, scale in _UNITS}


def parse_bytes(text: str) -> int | None:
    """The bytes `text` names (binary units), or None when it is not a size."""
    match = _SIZE.match(text)
    if not match:
        return None
    number, unit = match.groups()
    return int(float(number) * (_SCALE[unit.lower()] if unit else 1))


def human_bytes(n_bytes: float) -> str:
    """1.5 GiB, 92.1 MiB, 0 B: binary units, as llama.cpp and nvidia-smi report memory."""
    for unit, scale in _UNITS:
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes:.0f} B"


def format_bytes(count: int) -> str:
    """Decimal units, as the hub shows sizes: 98.4 MB."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"

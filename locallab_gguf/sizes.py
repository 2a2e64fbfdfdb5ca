"""Byte counts as people read them."""

from __future__ import annotations

_UNITS = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


def human_bytes(n_bytes: float) -> str:
    """1.5 GiB, 92.1 MiB, 0 B: binary units, as llama.cpp and nvidia-smi report memory."""
    for unit, scale in _UNITS:
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes:.0f} B"

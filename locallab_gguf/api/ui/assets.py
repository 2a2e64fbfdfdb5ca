"""The page's files, read from the package once when the app is built."""

from __future__ import annotations

import hashlib
from importlib.resources import files
from importlib.resources.abc import Traversable

import msgspec

INDEX = "index.html"

# Set here rather than guessed from the platform's table: Python 3.11 on some systems knows
# no .mjs, and a module script served as text/plain is refused by the browser. (Litestar
# adds "; charset=utf-8" to text types.)
_MEDIA_TYPES = {
    ".html": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_TEXT = "text/plain"  # README.md, the licences


class Asset(msgspec.Struct, frozen=True):
    body: bytes
    media_type: str
    etag: str  # quoted, as the ETag header carries it


def load_assets(root: Traversable | None = None) -> dict[str, Asset]:
    """Every file under the package's static/ folder, keyed by its path there ('js/app.js')."""
    root = root or files("locallab_gguf.api.ui") / "static"
    assets: dict[str, Asset] = {}
    _collect(root, "", assets)
    if INDEX not in assets:
        raise FileNotFoundError(f"the chat page's {INDEX} is missing from the package")
    return assets


def _collect(folder: Traversable, prefix: str, into: dict[str, Asset]) -> None:
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue  # an editor's or a file manager's leftovers
        name = prefix + entry.name
        if entry.is_dir():
            _collect(entry, name + "/", into)
            continue
        body = entry.read_bytes()
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        digest = hashlib.sha256(body).hexdigest()[:16]
        into[name] = Asset(body, _MEDIA_TYPES.get(suffix, _TEXT), f'"{digest}"')

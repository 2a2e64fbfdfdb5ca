"""The chat page's files as the server sends them: where, under which headers, to whom.

What the page does in a browser is tested in test_chat_page.py.
"""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from pathlib import Path

import msgspec

from locallab_gguf.api.ui.assets import load_assets
from tests.conftest import TEST_SETTINGS, ServerFactory

STATIC = Path(__file__).resolve().parents[3] / "locallab_gguf" / "api" / "ui" / "static"
PAGE_FILES = ["/", "/ui/chat.css", "/ui/js/app.js", "/ui/vendor/marked.esm.js"]


class _InlineCode(HTMLParser):
    """Collects every way an HTML file could carry script or style of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script":
            self._in_script = True
            if "src" not in names:
                self.found.append("a <script> without src")
        if tag == "style":
            self.found.append("a <style> element")
        self.found += [f"a {name}= attribute on <{tag}>" for name in names if name.startswith("on")]
        if "style" in names:
            self.found.append(f"a style= attribute on <{tag}>")
        if any(value and value.strip().lower().startswith("javascript:") for _, value in attrs):
            self.found.append(f"a javascript: URL on <{tag}>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.found.append("script text inside <script>")


def test_the_page_holds_no_inline_script_style_or_event_handler() -> None:
    parser = _InlineCode()
    parser.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    assert parser.found == []


def test_the_page_and_its_files_are_sent_with_a_policy_that_forbids_inline_script(
    make_server: ServerFactory,
) -> None:
    server = make_server(initial_model=None, wait_for=None)
    for path in PAGE_FILES:
        reply = server.client.get(path)
        assert reply.status_code == 200, path
        policy = reply.headers["Content-Security-Policy"]
        directives = dict(part.strip().partition(" ")[::2] for part in policy.split(";"))
        assert directives["script-src"] == "'self'", policy  # no 'unsafe-inline', no eval
        assert directives["default-src"] == "'none'"
        assert directives["connect-src"] == "'self'"
        assert directives["require-trusted-types-for"] == "'script'"
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert server.client.get("/").headers["content-type"].startswith("text/html")
    # A module script must come as JavaScript, or the browser refuses to run it.
    for path in ("/ui/js/app.js", "/ui/vendor/purify.es.mjs"):
        assert server.client.get(path).headers["content-type"].startswith("text/javascript")


def test_an_unchanged_file_is_answered_with_304(make_server: ServerFactory) -> None:
    server = make_server(initial_model=None, wait_for=None)
    first = server.client.get("/ui/js/app.js")
    again = server.client.get("/ui/js/app.js", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    assert again.content == b""


def test_a_missing_page_file_is_404(make_server: ServerFactory) -> None:
    server = make_server(initial_model=None, wait_for=None)
    assert server.client.get("/ui/nothing.js").status_code == 404


def test_no_ui_serves_the_api_alone(make_server: ServerFactory) -> None:
    server = make_server(
        msgspec.structs.replace(TEST_SETTINGS, ui=False), initial_model=None, wait_for=None
    )
    assert server.client.get("/").status_code == 404
    assert server.client.get("/ui/js/app.js").status_code == 404
    assert server.client.get("/health").status_code == 200


def test_the_page_loads_without_a_key_while_the_api_asks_for_one(
    make_server: ServerFactory,
) -> None:
    settings = msgspec.structs.replace(TEST_SETTINGS, api_keys=("page-key",))
    server = make_server(settings, initial_model=None, wait_for=None)
    for path in PAGE_FILES:
        assert server.client.get(path).status_code == 200, path
    assert server.client.get("/v1/models").status_code == 401
    assert server.client.get("/models/available").status_code == 401
    keyed = {"Authorization": "Bearer page-key"}
    assert server.client.get("/v1/models", headers=keyed).status_code == 200


def test_loading_the_page_costs_no_request_of_the_rate_limit(make_server: ServerFactory) -> None:
    settings = msgspec.structs.replace(TEST_SETTINGS, rate_limit=True, burst=2)
    server = make_server(settings, initial_model=None, wait_for=None)
    for _ in range(3):
        for path in PAGE_FILES:
            assert server.client.get(path).status_code == 200, path
    assert server.client.get("/models/available").status_code == 200
    assert server.client.get("/models/available").status_code == 200
    assert server.client.get("/models/available").status_code == 429  # the API still counts


def test_the_server_serves_every_file_of_the_static_folder() -> None:
    shipped = load_assets()
    on_disk = {
        str(path.relative_to(STATIC))
        for path in STATIC.rglob("*")
        if path.is_file() and not path.name.startswith(".")
    }
    assert set(shipped) == on_disk
    for name in ("index.html", "js/app.js", "vendor/marked.esm.js", "vendor/purify.es.mjs"):
        assert name in shipped


def test_vendored_libraries_match_their_pinned_versions_and_checksums() -> None:
    vendor = STATIC / "vendor"
    table = (vendor / "README.md").read_text(encoding="utf-8")
    rows = re.findall(
        r"^\| (\S+) \| ([\d.]+) \| `([^`]+)` \| `[^`]+` \| `([0-9a-f]{64})` \|", table, re.M
    )
    assert {row[0] for row in rows} == {"marked", "dompurify"}
    for package, version, name, digest in rows:
        body = (vendor / name).read_bytes()
        assert hashlib.sha256(body).hexdigest() == digest, name
        assert version in body[:400].decode(), f"{name} is not {package} {version}"
    assert (vendor / "marked.LICENSE.md").is_file()
    assert (vendor / "dompurify.LICENSE").is_file()

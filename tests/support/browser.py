"""A real headless browser for the chat page: Debian's Chromium, driven by Playwright.

Playwright's own browser builds are never downloaded (there is no internet here); it drives
the system's `chromium` (`make test` installs the Debian package when it is missing).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from typing import Any

from playwright.sync_api import Browser, Page, Route, sync_playwright

CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# A busy 2-core machine generates slowly; waits end as soon as the page is ready.
PAGE_TIMEOUT_MS = 180_000


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    if executable is None:
        raise RuntimeError(
            "the chat page tests need Chromium: install Debian's chromium package "
            "(make test does) or put a chromium executable on PATH"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class ChatRequests:
    """The bodies the page sends to /v1/chat/completions, with fields a test adds on the way
    (a grammar that forces the output, a ban on ending early): the page itself has no field
    for them, and the server must answer them like any client's."""

    def __init__(self, page: Page, extra: dict[str, Any] | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.extra = extra or {}
        page.route("**/v1/chat/completions", self._forward)

    def _forward(self, route: Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        self.sent.append(dict(body))
        body.update(self.extra)
        route.continue_(post_data=json.dumps(body))

"""Takes docs/chat-page.png, the chat page pictured in docs/api/locallab.md, from a server.

    .venv/bin/python -m docs.chat_page_screenshot

Serves the default model on a free loopback port, asks it for some code in headless Chromium
(as the tests do) and saves the page. The reply is the model's own, so it differs a little
from machine to machine.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from locallab_gguf.cli.serve import build_app, serve_in_thread
from locallab_gguf.settings import Settings
from tests.support.browser import PAGE_TIMEOUT_MS, chromium
from tests.support.servers import RunningServer

PICTURE = Path(__file__).resolve().parent / "chat-page.png"
QUESTION = "Write a Python function that reverses a string, in a code block, and explain it."


def main() -> None:
    settings = Settings(threads=2, threads_batch=2, ctx=2048, parallel=2, rate_limit=False)
    app = build_app(settings)
    with serve_in_thread(app) as running, chromium() as browser:
        RunningServer(app, running).wait_for_model()
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.goto(running.url + "/")
        page.locator("#model option").first.wait_for(state="attached")
        page.click("#settings-toggle")
        page.fill("#system", "You are a helpful programming assistant.")
        page.fill("#temperature", "0")
        page.locator("#temperature").dispatch_event("change")
        page.fill("#max-tokens", "120")
        page.locator("#max-tokens").dispatch_event("change")
        page.click("#settings-toggle")
        page.fill("#prompt", QUESTION)
        page.click("#send")
        # Generation on a busy machine may take minutes; the picture waits for the whole reply.
        page.wait_for_selector('article.assistant[data-state="done"]', timeout=900_000)
        page.screenshot(path=str(PICTURE))
    print(f"wrote {PICTURE}")


if __name__ == "__main__":
    main()

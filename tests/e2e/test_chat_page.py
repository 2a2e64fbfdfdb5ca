"""The chat page in a real headless Chromium against real servers.

One browser serves the whole module; each test gets a fresh browser context (its own
localStorage). Model output is never compared with a literal: the tests force it where the
text matters (a JSON-schema grammar) and ban the end-of-generation tokens where its length
matters, by adding those fields to the page's requests on their way out (tests/support/browser.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import msgspec
import pytest
from llama_cpp import Llama
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, expect

from locallab_gguf.models.registry import Registry
from tests.conftest import DEFAULT_ID, TEST_SETTINGS, ServerFactory
from tests.support.browser import PAGE_TIMEOUT_MS, ChatRequests, chromium
from tests.support.servers import RunningServer, wait_until

# A busy 2-core machine generates slowly; every wait ends as soon as the page is ready.
expect.set_options(timeout=PAGE_TIMEOUT_MS)

ENCODER_ID = "smollm2-vectors"
TWIN_ID = "smollm2-135m-twin"
# Recorded by the page's own DOM: the reply's text length each time it changes while the
# reply is still streaming.
RECORD_GROWTH = """() => {
  window.grewTo = [];
  new MutationObserver(() => {
    const reply = document.querySelector('article.assistant[data-state="streaming"] .content');
    if (reply) window.grewTo.push(reply.textContent.length);
  }).observe(document.getElementById('messages'),
             {subtree: true, childList: true, characterData: true, attributes: true});
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as running:
        yield running


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh context, failing the test on any script error or any violation of the
    page's Content-Security-Policy (the page must keep to its own policy)."""
    context = browser.new_context()
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))

    def watch(message: ConsoleMessage) -> None:
        if re.search(r"Content Security Policy|Trusted Type", message.text):
            problems.append(message.text)

    page.on("console", watch)
    yield page
    context.close()
    assert problems == []


@pytest.fixture(scope="module")
def never_end(model_path: Path) -> dict[str, Any]:
    """A logit_bias that bans every end-of-generation token: a reply runs to max_tokens."""
    llama = Llama(str(model_path), vocab_only=True, verbose=False)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        ends = [t for t in range(llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    finally:
        llama.close()
    assert ends
    return {"logit_bias": {str(token): -100 for token in ends}}


class Chat:
    """The page as a person uses it."""

    def __init__(self, page: Page, server: RunningServer) -> None:
        self.page = page
        self.url = server.url

    def open(self) -> None:
        self.page.goto(self.url + "/")

    def wait_for_models(self) -> None:
        expect(self.page.locator("#model option").first).to_be_attached()

    def set_max_tokens(self, count: int) -> None:
        if not self.page.locator("#settings").is_visible():
            self.page.click("#settings-toggle")
        self.page.fill("#max-tokens", str(count))
        self.page.locator("#max-tokens").dispatch_event("change")

    def send(self, text: str) -> Locator:
        self.page.fill("#prompt", text)
        self.page.click("#send")
        return self.last_reply()

    def last_reply(self) -> Locator:
        return self.page.locator("article.assistant").last

    def conversations(self) -> Locator:
        return self.page.locator("#conversations li.conversation")


def finished(reply: Locator, state: str = "done") -> None:
    expect(reply).to_have_attribute("data-state", state)


def test_a_reply_grows_while_it_streams_and_ends_with_its_figures(
    server: RunningServer, page: Page, never_end: dict[str, Any]
) -> None:
    requests = ChatRequests(page, never_end)
    chat = Chat(page, server)
    chat.open()
    chat.wait_for_models()
    chat.set_max_tokens(24)
    page.evaluate(RECORD_GROWTH)
    before = server.engine_stats().completion_tokens_total

    reply = chat.send("Tell me about the sea.")
    finished(reply)

    lengths = page.evaluate("window.grewTo")
    assert len({length for length in lengths if length > 0}) >= 2, lengths
    expect(reply.locator(".content")).not_to_be_empty()
    expect(reply.locator(".tokens")).to_have_text("24 tokens")
    expect(reply.locator(".rate")).to_have_text(re.compile(r"^\d+(\.\d)? tokens/s$"))
    expect(reply.locator(".first-token")).to_have_text(re.compile(r"^first token \d+ ms$"))
    expect(reply.locator(".cut")).to_have_text("cut at the token limit")
    assert server.engine_stats().completion_tokens_total - before == 24
    sent = requests.sent[0]
    assert sent["model"] == DEFAULT_ID
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == [{"role": "user", "content": "Tell me about the sea."}]


def test_stop_ends_the_reply_and_frees_the_servers_slot(
    server: RunningServer, page: Page, never_end: dict[str, Any]
) -> None:
    ChatRequests(page, never_end)
    chat = Chat(page, server)
    chat.open()
    chat.wait_for_models()
    chat.set_max_tokens(900)
    before = server.engine_stats().completion_tokens_total

    reply = chat.send("Write a long story about a lighthouse.")
    expect(reply.locator(".content")).not_to_be_empty()
    page.click("#stop")

    finished(reply, "stopped")
    expect(reply.locator(".stopped")).to_have_text("stopped")
    expect(page.locator("#send")).to_be_visible()
    wait_until(
        lambda: server.client.get("/system/info").json()["model"]["engine"]["slots_busy"] == 0,
        timeout=60,
    )
    assert server.engine_stats().completion_tokens_total - before < 900


def test_conversations_are_kept_across_a_reload_renamed_and_deleted(
    server: RunningServer, page: Page, never_end: dict[str, Any]
) -> None:
    ChatRequests(page, never_end)
    chat = Chat(page, server)
    chat.open()
    chat.wait_for_models()
    chat.set_max_tokens(4)
    finished(chat.send("Hello there"))

    page.reload()
    conversations = chat.conversations()
    expect(conversations).to_have_count(1)
    expect(conversations.locator(".open")).to_have_text("Hello there")
    expect(page.locator("article.user .content")).to_have_text("Hello there")
    expect(chat.last_reply().locator(".tokens")).to_have_text("4 tokens")

    conversations.first.locator(".rename").click()
    page.locator(".rename-input").fill("Greetings")
    page.locator(".rename-input").press("Enter")
    page.click("#new-chat")
    expect(conversations).to_have_count(2)
    page.reload()
    expect(conversations.locator(".open")).to_have_text(["New chat", "Greetings"])

    greetings = conversations.filter(has_text="Greetings")
    greetings.locator(".open").click()
    expect(page.locator("article.user .content")).to_have_text("Hello there")
    greetings.locator(".delete").click()
    greetings.locator(".delete").click()  # the second click confirms
    expect(conversations).to_have_count(1)
    page.reload()
    expect(conversations.locator(".open")).to_have_text(["New chat"])
    expect(page.locator("article")).to_have_count(0)


def test_regenerate_asks_again_and_replaces_the_last_reply(
    server: RunningServer, page: Page, never_end: dict[str, Any]
) -> None:
    requests = ChatRequests(page, never_end)
    chat = Chat(page, server)
    chat.open()
    chat.wait_for_models()
    chat.set_max_tokens(4)
    finished(chat.send("Name a colour."))

    chat.last_reply().locator(".regenerate").click()
    finished(chat.last_reply())
    expect(page.locator("article.assistant")).to_have_count(1)
    assert len(requests.sent) == 2
    assert requests.sent[1]["messages"] == requests.sent[0]["messages"]


def test_model_output_with_markup_is_shown_as_text_and_runs_nothing(
    server: RunningServer, page: Page
) -> None:
    payload = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    schema = {"type": "string", "enum": [payload]}
    forced = {"type": "json_schema", "json_schema": {"name": "markup", "schema": schema}}
    requests = ChatRequests(page, {"response_format": forced})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    chat = Chat(page, server)
    chat.open()
    chat.wait_for_models()
    chat.set_max_tokens(100)
    finished(chat.send("Show me some HTML."))
    assert "response_format" not in requests.sent[0]  # the test added it, not the page

    for _ in ("streamed", "reloaded from storage"):
        content = chat.last_reply().locator(".content")
        expect(content).to_contain_text(payload)
        expect(content.locator("img, script")).to_have_count(0)
        page.reload()
    assert dialogs == []


def test_markdown_that_would_run_script_is_rendered_inert(
    server: RunningServer, page: Page
) -> None:
    """What marked itself turns into markup (links, images) passes DOMPurify: no script URL,
    no event handler, no raw HTML survives."""
    Chat(page, server).open()
    rendered = page.evaluate(
        """async () => {
        const { renderMarkdown } = await import('/ui/js/markdown.js');
        const box = document.createElement('div');
        renderMarkdown(box, [
          '[click me](javascript:alert(3))',
          '![pic](javascript:alert(4))',
          '<a href="javascript:alert(5)">raw link</a>',
          '<svg onload=alert(6)>',
          '```html',
          '<script>alert(7)</script>',
          '```',
        ].join('\\n'));
        document.body.append(box);
        return {
          html: box.innerHTML,
          hrefs: [...box.querySelectorAll('[href], [src]')].map(
            (node) => node.getAttribute('href') ?? node.getAttribute('src')),
          handlers: [...box.querySelectorAll('*')].flatMap(
            (node) => [...node.attributes].map((a) => a.name).filter((n) => n.startsWith('on'))),
          code: box.querySelector('pre code')?.textContent,
        };
    }"""
    )
    assert not [url for url in rendered["hrefs"] if url and "javascript" in url.lower()]
    assert rendered["handlers"] == []
    assert "<svg" not in rendered["html"] and "<script" not in rendered["html"]
    assert rendered["code"].strip() == "<script>alert(7)</script>"  # shown, as code
    assert page.locator("pre + .copy, .code-block .copy").count() == 1


def test_the_picker_shows_each_models_state_and_the_request_names_the_chosen_one(
    make_server: ServerFactory, registry: Registry, page: Page, never_end: dict[str, Any]
) -> None:
    spec = registry.get(DEFAULT_ID)
    twin = msgspec.structs.replace(spec, id=TWIN_ID, name="SmolLM2 twin")
    # The same file as an embedding model: it does not chat, so the picker leaves it out,
    # resident or not.
    encoder = msgspec.structs.replace(
        spec, id=ENCODER_ID, name="SmolLM2 vectors", kind="embedding", pooling="mean"
    )
    models = {DEFAULT_ID: spec, TWIN_ID: twin, ENCODER_ID: encoder}
    server = make_server(registry_=Registry(default=DEFAULT_ID, models=models, source="test"))
    vectors = server.client.post("/v1/embeddings", json={"model": ENCODER_ID, "input": "hi"})
    assert vectors.status_code == 200
    requests = ChatRequests(page, never_end)
    chat = Chat(page, server)
    chat.open()
    options = page.locator("#model option")
    expect(options).to_have_count(2)
    assert ENCODER_ID not in [options.nth(i).get_attribute("value") for i in range(2)]
    expect(options.nth(0)).to_have_attribute("data-state", "resident")
    expect(options.nth(1)).to_have_attribute("data-state", "local")
    expect(page.locator("#model")).to_have_value(DEFAULT_ID)
    expect(page.locator("#load-model")).to_be_hidden()

    page.select_option("#model", TWIN_ID)
    expect(page.locator("#load-model")).to_have_text("Load")
    chat.set_max_tokens(4)
    # The server loads the model a request names: the reply comes from the twin.
    answered = chat.send("Hello")
    finished(answered)
    expect(answered.locator(".who")).to_have_text(TWIN_ID)
    assert requests.sent[-1]["model"] == TWIN_ID
    page.reload()
    expect(options.nth(1)).to_have_attribute("data-state", "resident")

    page.reload()  # the choice is kept
    expect(page.locator("#model")).to_have_value(TWIN_ID)


def test_with_an_api_key_the_page_asks_for_it_and_works_once_given(
    make_server: ServerFactory, page: Page, never_end: dict[str, Any]
) -> None:
    server = make_server(msgspec.structs.replace(TEST_SETTINGS, api_keys=("page-key",)))
    ChatRequests(page, never_end)
    chat = Chat(page, server)
    chat.open()
    expect(page.locator("#key-panel")).to_be_visible()
    expect(page.locator("#key-message")).to_have_text(
        "This server needs an API key. Enter it above."
    )

    page.fill("#api-key", "not-the-key")
    page.click("#save-key")
    expect(page.locator("#key-message")).to_have_text(re.compile("refused this API key"))

    page.fill("#api-key", "page-key")
    page.click("#save-key")
    expect(page.locator("#key-panel")).to_be_hidden()
    chat.wait_for_models()
    chat.set_max_tokens(4)
    with page.expect_request("**/v1/chat/completions") as sent:
        reply = chat.send("Hello")
    assert sent.value.headers["authorization"] == "Bearer page-key"
    finished(reply)
    page.reload()  # the key is remembered in this browser
    expect(page.locator("#key-panel")).to_be_hidden()
    chat.wait_for_models()


def test_a_server_without_a_model_is_explained(make_server: ServerFactory, page: Page) -> None:
    # A server that loads models only when asked (--no-autoload) answers 503 until one is.
    settings = msgspec.structs.replace(TEST_SETTINGS, autoload=False)
    server = make_server(settings, initial_model=None, wait_for=None)
    chat = Chat(page, server)
    chat.open()
    chat.wait_for_models()
    reply = chat.send("Hello")
    finished(reply, "error")
    expect(reply.locator(".error")).to_contain_text("The server cannot answer right now")
    expect(reply.locator(".error")).to_contain_text("is not loaded")


def test_a_rate_limited_send_says_when_to_try_again(make_server: ServerFactory, page: Page) -> None:
    # The page's own files are free; listing the models costs its two requests of the minute.
    settings = msgspec.structs.replace(TEST_SETTINGS, rate_limit=True, requests_per_minute=2)
    server = make_server(
        settings, initial_model=None, wait_for=None, clock=lambda: 1_800_000_000.0
    )  # the minute never passes
    chat = Chat(page, server)
    chat.open()
    chat.wait_for_models()
    with page.expect_response("**/v1/chat/completions") as answered:
        reply = chat.send("Hello")
    assert answered.value.status == 429
    retry_after = answered.value.headers["retry-after"]
    finished(reply, "error")
    expect(reply.locator(".error")).to_have_text(
        "Too many requests: the server's rate limit lets this client send again "
        f"in {retry_after} s."
    )


def test_losing_the_network_is_explained_and_a_retry_works_once_it_is_back(
    server: RunningServer, page: Page, never_end: dict[str, Any]
) -> None:
    ChatRequests(page, never_end)
    chat = Chat(page, server)
    chat.open()
    chat.wait_for_models()
    chat.set_max_tokens(4)
    page.context.set_offline(True)
    reply = chat.send("Hello")
    finished(reply, "error")
    expect(reply.locator(".error")).to_contain_text("Cannot reach the server")

    page.context.set_offline(False)
    chat.last_reply().locator(".regenerate").click()
    finished(chat.last_reply())

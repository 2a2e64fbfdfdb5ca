"""Rate limits, API keys and CORS on real servers over real HTTP.

The limits run on a fake clock that the tests move, so a test waits out `Retry-After`
without sleeping; the Redis tests run a real redis-server on a free port.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from locallab_gguf.models.files import ModelFiles
from locallab_gguf.models.registry import Registry
from locallab_gguf.serving.loader import local_engine_opener
from locallab_gguf.serving.model_manager import ModelManager
from locallab_gguf.settings import Settings
from tests.conftest import TEST_SETTINGS, ServerFactory
from tests.support.redis_server import RedisServer, running_redis
from tests.support.servers import RunningServer, app_of, wait_until

LIMITED = msgspec.structs.replace(TEST_SETTINGS, rate_limit=True)
OK = {"prompt": "Once upon a time", "max_length": 1, "temperature": 0}
RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def with_settings(**changes: object) -> Settings:
    return msgspec.structs.replace(LIMITED, **changes)


def spend_burst(server: RunningServer, path: str = "/models/available", **kwargs: object) -> None:
    for _ in range(10):
        reply = server.client.get(path, **kwargs)  # type: ignore[arg-type]
        assert reply.status_code == 200, reply.text


def test_the_11th_request_in_a_second_is_429_and_served_after_retry_after(
    make_server: ServerFactory,
) -> None:
    clock = FakeClock()
    server = make_server(LIMITED, clock=clock)
    for remaining in range(9, -1, -1):
        reply = server.client.post("/generate", json=OK)
        assert reply.status_code == 200, reply.text
        assert reply.headers["RateLimit-Limit"] == "10"
        assert reply.headers["RateLimit-Remaining"] == str(remaining)
        assert reply.headers["RateLimit-Reset"] == "1"
        assert reply.headers["RateLimit-Policy"] == "60;w=60, 10;w=1"
    refused = server.client.post("/generate", json=OK)
    assert refused.status_code == 429
    assert refused.json() == {
        "detail": "Rate limit exceeded: at most 10 requests in any 1 s. Retry in 1 s.",
        "retry_after": 1,
    }
    assert refused.headers["Retry-After"] == "1"
    assert [refused.headers[name] for name in RATE_HEADERS] == ["10", "0", "1", "60;w=60, 10;w=1"]
    clock.advance(int(refused.headers["Retry-After"]))
    again = server.client.post("/generate", json=OK)
    assert again.status_code == 200
    assert again.headers["RateLimit-Remaining"] == "9"


def test_the_minute_window_slides(make_server: ServerFactory) -> None:
    clock = FakeClock()
    server = make_server(
        with_settings(requests_per_minute=3), initial_model=None, wait_for=None, clock=clock
    )
    for _ in range(3):
        assert server.client.get("/models/available").status_code == 200
        clock.advance(10)
    refused = server.client.get("/models/available")  # 30 s after the first
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "30"
    assert "at most 3 requests in any 60 s" in refused.json()["detail"]
    clock.advance(30)
    assert server.client.get("/models/available").status_code == 200


def test_health_and_options_are_never_limited(make_server: ServerFactory) -> None:
    server = make_server(LIMITED, initial_model=None, wait_for=None, clock=FakeClock())
    spend_burst(server)
    assert server.client.get("/models/available").status_code == 429
    for _ in range(20):
        health = server.client.get("/health")
        assert health.status_code == 200
        assert "RateLimit-Limit" not in health.headers
        assert server.client.options("/generate").status_code != 429


def test_a_spoofed_x_forwarded_for_from_an_untrusted_peer_changes_nothing(
    make_server: ServerFactory,
) -> None:
    server = make_server(LIMITED, initial_model=None, wait_for=None, clock=FakeClock())
    spend_burst(server)
    for spoof in (
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9"},
        {"X-Real-IP": "203.0.113.9"},
    ):
        assert server.client.get("/models/available", headers=spoof).status_code == 429


def test_clients_behind_a_trusted_proxy_do_not_share_a_budget(make_server: ServerFactory) -> None:
    server = make_server(
        with_settings(trusted_proxies=("127.0.0.1",)),
        initial_model=None,
        wait_for=None,
        clock=FakeClock(),
    )
    first = {"X-Forwarded-For": "203.0.113.1"}
    spend_burst(server, headers=first)
    assert server.client.get("/models/available", headers=first).status_code == 429
    second = server.client.get("/models/available", headers={"X-Forwarded-For": "203.0.113.2"})
    assert second.status_code == 200
    assert second.headers["RateLimit-Remaining"] == "9"
    # The proxy itself (no header) is a client of its own too.
    assert server.client.get("/models/available").status_code == 200


USER_HEADER = "X-OpenWebUI-User-Id"


def test_each_user_behind_a_trusted_front_end_has_a_budget_of_their_own(
    make_server: ServerFactory,
) -> None:
    """Open WebUI's users all come from one address; the header it forwards names each."""
    server = make_server(
        with_settings(trusted_proxies=("127.0.0.0/8",), client_id_header=USER_HEADER),
        initial_model=None,
        wait_for=None,
        clock=FakeClock(),
    )
    alice = {USER_HEADER: "alice"}
    spend_burst(server, headers=alice)
    assert server.client.get("/models/available", headers=alice).status_code == 429
    bob = server.client.get("/models/available", headers={USER_HEADER: "bob"})
    assert bob.status_code == 200
    assert bob.headers["RateLimit-Remaining"] == "9"
    # The front-end's own requests (no user) are a client of their own.
    assert server.client.get("/models/available").status_code == 200


def test_a_user_header_from_an_untrusted_peer_buys_no_fresh_budget(
    make_server: ServerFactory,
) -> None:
    server = make_server(
        with_settings(trusted_proxies=("10.0.0.0/8",), client_id_header=USER_HEADER),
        initial_model=None,
        wait_for=None,
        clock=FakeClock(),
    )
    spend_burst(server, headers={USER_HEADER: "alice"})
    for user in ("bob", "carol"):
        reply = server.client.get("/models/available", headers={USER_HEADER: user})
        assert reply.status_code == 429


def test_with_an_accepted_key_the_user_header_splits_the_keys_budget(
    make_server: ServerFactory,
) -> None:
    server = make_server(
        with_settings(api_keys=("front-end-key",), client_id_header=USER_HEADER),
        initial_model=None,
        wait_for=None,
        clock=FakeClock(),
    )
    key = {"Authorization": "Bearer front-end-key"}
    spend_burst(server, headers={**key, USER_HEADER: "alice"})
    alice = server.client.get("/models/available", headers={**key, USER_HEADER: "alice"})
    assert alice.status_code == 429
    bob = server.client.get("/models/available", headers={**key, USER_HEADER: "bob"})
    assert bob.status_code == 200


def test_each_api_key_has_a_budget_of_its_own(make_server: ServerFactory) -> None:
    server = make_server(
        with_settings(api_keys=("key-one", "key-two")),
        initial_model=None,
        wait_for=None,
        clock=FakeClock(),
    )
    one = {"Authorization": "Bearer key-one"}
    spend_burst(server, headers=one)
    assert server.client.get("/models/available", headers=one).status_code == 429
    two = server.client.get("/models/available", headers={"Authorization": "Bearer key-two"})
    assert two.status_code == 200


def test_wrong_keys_are_limited_by_address(make_server: ServerFactory) -> None:
    server = make_server(
        with_settings(api_keys=("the-key",)), initial_model=None, wait_for=None, clock=FakeClock()
    )
    for n in range(10):
        guess = {"Authorization": f"Bearer guess-{n}"}
        assert server.client.get("/models/available", headers=guess).status_code == 401
    guess = {"Authorization": "Bearer guess-10"}
    assert server.client.get("/models/available", headers=guess).status_code == 429
    # The owner of the key is not locked out by someone guessing from elsewhere.
    owner = server.client.get("/models/available", headers={"Authorization": "Bearer the-key"})
    assert owner.status_code == 200


def test_api_keys_missing_wrong_and_right(make_server: ServerFactory, tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("from-the-file\n")
    server = make_server(
        msgspec.structs.replace(TEST_SETTINGS, api_keys=("s3cret-key",), api_key_file=str(key_file))
    )
    missing = server.client.post("/generate", json=OK)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="locallab-gguf"'
    assert "requires an API key" in missing.json()["detail"]
    wrong = server.client.post("/generate", json=OK, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer ")
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert "nope" not in wrong.text
    for key in ("s3cret-key", "from-the-file"):
        right = server.client.post("/generate", json=OK, headers={"Authorization": f"Bearer {key}"})
        assert right.status_code == 200, right.text
    assert server.client.get("/schema/openapi.json").status_code == 401
    health = server.client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy"


def test_body_and_length_limits_still_hold_behind_the_middleware(
    make_server: ServerFactory,
) -> None:
    server = make_server(with_settings(max_body_bytes=2048, api_keys=("k",)), clock=FakeClock())
    auth = {"Authorization": "Bearer k"}
    too_big = server.client.post("/generate", json={**OK, "prompt": "x" * 4096}, headers=auth)
    assert too_big.status_code == 413
    assert "larger than the server accepts" in too_big.json()["detail"]
    assert "RateLimit-Limit" in too_big.headers
    # Digits are a token each: a prompt longer than the 1,024-token context in under 2 KB.
    too_long = server.client.post("/generate", json={**OK, "prompt": "7" * 1900}, headers=auth)
    assert too_long.status_code == 413
    assert "the context is 1,024" in too_long.json()["detail"]


def test_cors_is_off_by_default(make_server: ServerFactory) -> None:
    server = make_server(TEST_SETTINGS, initial_model=None, wait_for=None)
    reply = server.client.get("/health", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in reply.headers


def test_cors_preflight_and_answers_for_an_allowed_origin(make_server: ServerFactory) -> None:
    server = make_server(
        with_settings(cors_origins=("https://app.example",), api_keys=("k",)),
        initial_model=None,
        wait_for=None,
        clock=FakeClock(),
    )
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    for _ in range(15):  # neither limited nor asked for a key
        reply = server.client.options("/generate", headers=preflight)
        assert reply.status_code == 204
        assert reply.headers["Access-Control-Allow-Origin"] == "https://app.example"
        allowed = reply.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
    other = server.client.options(
        "/generate", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in other.headers
    reply = server.client.get(
        "/models/available",
        headers={"Origin": "https://app.example", "Authorization": "Bearer k"},
    )
    assert reply.status_code == 200
    assert reply.headers["Access-Control-Allow-Origin"] == "https://app.example"
    exposed = reply.headers["Access-Control-Expose-Headers"].lower()
    assert "ratelimit-remaining" in exposed and "retry-after" in exposed
    # An error still reaches the page's script, so it can show why.
    refused = server.client.get("/models/available", headers={"Origin": "https://app.example"})
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == "https://app.example"


def test_two_replicas_sharing_redis_enforce_one_limit(
    make_server: ServerFactory, redis_server: RedisServer
) -> None:
    clock = FakeClock()
    shared = with_settings(rate_limit_store=redis_server.url)
    replicas = [
        make_server(shared, initial_model=None, wait_for=None, clock=clock) for _ in range(2)
    ]
    statuses = [replicas[n % 2].client.get("/models/available").status_code for n in range(12)]
    assert statuses == [200] * 10 + [429, 429]
    clock.advance(1)
    assert replicas[1].client.get("/models/available").status_code == 200


def test_redis_killed_fails_open_then_limits_again_when_it_returns(
    make_server: ServerFactory,
) -> None:
    with running_redis() as redis_server:
        clock = FakeClock()
        server = make_server(
            with_settings(rate_limit_store=redis_server.url),
            initial_model=None,
            wait_for=None,
            clock=clock,
        )
        assert "RateLimit-Limit" in server.client.get("/models/available").headers
        redis_server.stop()
        for _ in range(15):  # more than the burst, all served while the limits are blind
            reply = server.client.get("/models/available")
            assert reply.status_code == 200
            assert "RateLimit-Limit" not in reply.headers
        redis_server.start()
        wait_until(
            lambda: "RateLimit-Limit" in server.client.get("/models/available").headers,
            timeout=10,
        )
        clock.advance(60)
        spend_burst(server)
        assert server.client.get("/models/available").status_code == 429


def test_redis_killed_with_fail_closed_answers_503(make_server: ServerFactory) -> None:
    with running_redis() as redis_server:
        server = make_server(
            with_settings(rate_limit_store=redis_server.url, rate_limit_fail="closed"),
            initial_model=None,
            wait_for=None,
            clock=FakeClock(),
        )
        redis_server.stop()
        reply = server.client.get("/models/available")
        assert reply.status_code == 503
        assert reply.headers["Retry-After"] == "1"
        assert "--rate-limit-fail closed" in reply.json()["detail"]
        assert redis_server.url not in reply.text  # where Redis lives is the log's business
        assert server.client.get("/health").status_code == 200


def test_no_rate_limit_turns_limits_off(make_server: ServerFactory) -> None:
    server = make_server(TEST_SETTINGS, initial_model=None, wait_for=None)
    for _ in range(30):
        reply = server.client.get("/models/available")
        assert reply.status_code == 200
        assert "RateLimit-Limit" not in reply.headers


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_an_exposed_server_without_a_key_warns_and_keys_never_reach_the_log(
    registry: Registry,
) -> None:
    records = Records()
    logger = logging.getLogger("locallab_gguf")
    logger.addHandler(records)
    try:
        for settings in (
            msgspec.structs.replace(TEST_SETTINGS, host="0.0.0.0"),
            msgspec.structs.replace(TEST_SETTINGS, host="0.0.0.0", api_keys=("hidden-key",)),
            msgspec.structs.replace(TEST_SETTINGS, host="127.0.0.1"),
        ):
            manager = ModelManager(registry, ModelFiles(), local_engine_opener(settings))
            app_of(settings, manager, initial_model=None)
    finally:
        logger.removeHandler(records)
    assert len(records.messages) == 2
    assert "0.0.0.0 without an API key" in records.messages[0]
    # The one key is a user key: nobody could manage models over HTTP, which the log says.
    assert "none of the API keys is an admin key" in records.messages[1]
    assert all("hidden-key" not in message for message in records.messages)


def test_429_reaches_a_real_client_as_a_normal_error(make_server: ServerFactory) -> None:
    server = make_server(LIMITED, initial_model=None, wait_for=None, clock=FakeClock())
    spend_burst(server)
    with httpx.Client(base_url=server.url) as other_connection:
        reply = other_connection.get("/models/available")
    assert reply.status_code == 429
    assert reply.headers["content-type"].startswith("application/json")

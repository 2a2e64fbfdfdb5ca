"""API keys and client addresses: who a request comes from, decided without any HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from locallab_gguf.api.common.middleware.client_address import TrustedProxies, forwarded_for
from locallab_gguf.api.common.middleware.keys import (
    ApiKeys,
    bearer_token,
    exposed_without_key,
    load_api_keys,
)
from locallab_gguf.errors import ConfigError, NotAuthenticated

NO_PROXIES = TrustedProxies([])
BEHIND_PROXY = TrustedProxies(["10.0.0.0/8", "192.0.2.7"])


def test_bearer_token_reads_the_scheme_case_insensitively() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None
    assert bearer_token(None) is None


def test_only_a_known_key_authenticates_and_names_its_client() -> None:
    keys = ApiKeys(["alpha-key", "beta-key"])
    alpha = keys.identify("Bearer alpha-key")
    assert alpha is not None and len(alpha) == 16 and "alpha" not in alpha
    assert keys.identify("Bearer beta-key") not in (None, alpha)
    assert keys.identify("Bearer alpha-key ") == alpha
    assert keys.identify("Bearer alpha") is None
    keys.authenticate("Bearer beta-key")
    with pytest.raises(NotAuthenticated, match="requires an API key") as missing:
        keys.authenticate(None)
    assert not missing.value.key_sent
    with pytest.raises(NotAuthenticated, match="not valid") as wrong:
        keys.authenticate("Bearer gamma-key")
    assert wrong.value.key_sent


def test_without_keys_every_request_is_accepted_and_no_token_names_a_client() -> None:
    keys = ApiKeys([])
    keys.authenticate(None)
    keys.authenticate("Bearer anything")
    # A made-up token must not buy a fresh rate-limit budget.
    assert keys.identify("Bearer anything") is None


def test_key_file_adds_keys_and_skips_comments(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# the team\nfile-key-1\n\n  file-key-2  # laptop\n")
    keys = load_api_keys(["flag-key"], str(key_file))
    for key in ("flag-key", "file-key-1", "file-key-2"):
        assert keys.identify(f"Bearer {key}") is not None
    assert keys.identify("Bearer laptop") is None


def test_bad_keys_and_unreadable_key_files_stop_the_server_without_showing_a_key(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="--api-key-file"):
        load_api_keys([], str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="number 2") as error:
        load_api_keys(["good-key", "two words"], None)
    assert "two words" not in str(error.value)


def test_binding_beyond_loopback_without_a_key_is_flagged() -> None:
    none, some = ApiKeys([]), ApiKeys(["k"])
    for host in ("0.0.0.0", "::", "192.168.1.20", "my-host.lan"):
        assert exposed_without_key(host, none)
        assert not exposed_without_key(host, some)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert not exposed_without_key(host, none)


def test_forwarding_headers_from_an_untrusted_peer_are_ignored() -> None:
    assert NO_PROXIES.client_address("198.51.100.4", "for=203.0.113.9", "203.0.113.9") == (
        "198.51.100.4"
    )
    assert BEHIND_PROXY.client_address("198.51.100.4", None, "203.0.113.9") == "198.51.100.4"


def test_x_forwarded_for_is_read_from_the_nearest_hop_back() -> None:
    # The client wrote a fake first hop; the proxies appended the real ones.
    chain = "1.1.1.1, 203.0.113.9, 10.1.2.3"
    assert BEHIND_PROXY.client_address("192.0.2.7", None, chain) == "203.0.113.9"
    assert BEHIND_PROXY.client_address("10.9.9.9", None, "203.0.113.9") == "203.0.113.9"
    assert BEHIND_PROXY.client_address("10.9.9.9", None, None) == "10.9.9.9"
    # A garbled hop stops the walk at the last proxy that is known.
    assert BEHIND_PROXY.client_address("10.9.9.9", None, "203.0.113.9, junk") == "10.9.9.9"


def test_forwarded_header_wins_and_its_nodes_are_parsed() -> None:
    header = 'for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711", for=10.0.0.1:8080'
    assert forwarded_for(header) == ["192.0.2.60", "2001:db8:cafe::17", "10.0.0.1"]
    assert forwarded_for("proto=https") == [""]
    got = BEHIND_PROXY.client_address("10.0.0.2", header, "198.51.100.1")
    assert got == "2001:db8:cafe::/64"  # an IPv6 client is its /64


def test_addresses_are_normalised_so_one_client_has_one_name() -> None:
    assert NO_PROXIES.client_address("::ffff:198.51.100.4", None, None) == "198.51.100.4"
    first = NO_PROXIES.client_address("2001:db8::1", None, None)
    assert first == NO_PROXIES.client_address("2001:0db8:0:0::ffff", None, None)
    assert NO_PROXIES.client_address(None, None, None) == "unknown"


def test_a_trusted_proxy_that_is_not_an_address_stops_the_server() -> None:
    with pytest.raises(ConfigError, match=r"--trusted-proxy 'proxy\.lan'"):
        TrustedProxies(["proxy.lan"])

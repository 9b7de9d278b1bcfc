"""Session ids name their owner; per-session tokens verify on any node holding the secret."""

from __future__ import annotations

import pytest

from media.config import ConfigError, node_id_from_hostname
from media.core.session_ids import Owner, owner_of
from media.server.auth import SessionTokens, secret_from_text
from tests.unit.test_config import parse as parse_config


def test_a_new_id_names_its_owner() -> None:
    owner = Owner("hark-0", 3)
    session_id = owner.new_session_id()
    assert session_id.startswith("hark-0.3.")
    assert owner_of(session_id) == owner
    assert owner.new_session_id() != session_id


@pytest.mark.parametrize(
    "session_id",
    [
        "",
        "no-dots-at-all",
        "Hark.0.AAAAAAAAAAAAAAAAAAAAAAAA",  # upper case node
        "-hark.0.AAAAAAAAAAAAAAAAAAAAAAAA",
        "hark.01.AAAAAAAAAAAAAAAAAAAAAAAA",  # leading zero
        "hark.256.AAAAAAAAAAAAAAAAAAAAAAAA",  # no such worker
        "hark.0.short",
        "hark.0.AAAAAAAAAAAAAAAAAAAAAAAA/../x",
        "10.0.0.1:80.0.AAAAAAAAAAAAAAAAAAAAAAAA",
        "a." * 40 + "0.AAAAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_a_malformed_id_names_no_owner(session_id: str) -> None:
    assert owner_of(session_id) is None


@pytest.mark.parametrize(
    ("hostname", "node"),
    [("hark-0.hark.default.svc", "hark-0"), ("My_Laptop", "my-laptop"), ("---", "node")],
)
def test_node_id_defaults_to_the_hostnames_first_label(hostname: str, node: str) -> None:
    assert node_id_from_hostname(hostname) == node


def test_a_node_id_must_be_a_dns_label() -> None:
    with pytest.raises(ConfigError, match="--node-id"):
        parse_config(["--node-id", "Node.1"])


def test_a_cluster_needs_a_shared_secret() -> None:
    with pytest.raises(ConfigError, match="--cluster-secret"):
        parse_config(["--redis-url", "redis://127.0.0.1:6379/0"])


def test_a_token_minted_on_one_node_verifies_on_another() -> None:
    minting = SessionTokens(secret_from_text("shared secret of the cluster"))
    other = SessionTokens(secret_from_text("shared secret of the cluster"))
    stranger = SessionTokens(secret_from_text("another cluster's secret!!"))
    session_id = Owner("a").new_session_id()
    token = minting.mint(session_id)
    assert other.verify(session_id, token)
    assert not stranger.verify(session_id, token)
    assert not other.verify(Owner("a").new_session_id(), token)
    assert not other.verify(session_id, None)

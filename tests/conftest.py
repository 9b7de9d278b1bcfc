from __future__ import annotations

import logging
from collections.abc import Iterator

import aioice.ice
import pytest


@pytest.fixture(autouse=True)
def _loopback_only_ice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep every WebRTC test on 127.0.0.1: aioice otherwise offers every interface but loopback."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    for name in ("aiortc", "aioice"):
        logging.getLogger(name).setLevel(logging.WARNING)
    yield

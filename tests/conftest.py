from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator

import aioice.ice
import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_error_logs(reason): the test expects ERROR records (the reason says which, and why)",
    )


@pytest.fixture(autouse=True)
def _loopback_only_ice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep every WebRTC test on 127.0.0.1: aioice otherwise offers every interface but loopback."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    for name in ("aiortc", "aioice"):
        logging.getLogger(name).setLevel(logging.WARNING)
    yield


class _ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def _no_error_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that logged at ERROR or above (a traceback from a handler, a servicer, a task),
    unless it is marked ``allow_error_logs("why")``."""
    handler = _ErrorRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    if handler.records and request.node.get_closest_marker("allow_error_logs") is None:
        pytest.fail(
            "logged at ERROR (mark the test allow_error_logs if it should):\n"
            + "\n".join(_described(record) for record in handler.records),
            pytrace=False,
        )


def _described(record: logging.LogRecord) -> str:
    text = f"{record.levelname} {record.name}: {record.getMessage()}"
    if record.exc_info and record.exc_info[1] is not None:
        text += "\n" + "".join(traceback.format_exception(record.exc_info[1]))
    return text


@pytest.fixture(autouse=True)
def _fresh_mdns_per_loop() -> Iterator[None]:
    """aioice keeps one mDNS responder per thread, tied by its lock to the first event loop that
    resolved a ``.local`` name; each test has its own loop, so forget it after every test (a
    server has one loop for its whole life and never needs this)."""
    yield
    state = aioice.ice._mdns
    protocol = getattr(state, "protocol", None)
    if protocol is not None and protocol.transport is not None:
        protocol.transport.close()
    for name in ("lock", "protocol", "subscribers"):
        if hasattr(state, name):
            delattr(state, name)

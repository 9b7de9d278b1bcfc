"""What a user imports from ``media``: the SDK, the config and every error, cheaply."""

from __future__ import annotations

import subprocess
import sys

import media
from media.client.hark_client import HarkClient as SdkClient
from media.config import Config as ServerConfig
from media.errors import HarkError


def test_the_sdk_the_config_and_the_errors_come_from_media() -> None:
    from media import Config, HarkClient, SessionNotFound

    assert HarkClient is SdkClient
    assert Config is ServerConfig
    assert issubclass(SessionNotFound, HarkError)
    assert media.__version__


def test_every_error_class_is_exported() -> None:
    errors = {
        name
        for name, value in vars(sys.modules["media.errors"]).items()
        if isinstance(value, type) and issubclass(value, HarkError)
    }
    assert errors - set(media.__all__) == set()
    assert all(hasattr(media, name) for name in media.__all__)


def test_importing_media_loads_neither_grpc_nor_the_media_stack() -> None:
    heavy = ("grpc", "av", "aiortc", "aiohttp", "webrtcvad")
    probe = f"import sys, media; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"

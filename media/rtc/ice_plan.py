"""``--udp-port`` and ``--ice-public-address`` for the process: the shared socket, and the hook
that makes Hark's ICE gathering use it and announce the public address."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from media.config import Config
from media.rtc.compat import install_ice_plan
from media.rtc.udp_mux import UdpMux

logger = logging.getLogger(__name__)


class IcePlan:
    """Owns the shared socket (if any) and the gathering hook; ``stop()`` undoes both."""

    def __init__(self, config: Config, on_drop: Callable[[str], None]) -> None:
        self._udp_port = config.udp_port
        self._host_addresses = config.ice_addresses
        self._public_addresses = config.ice_public_addresses
        self._on_drop = on_drop
        self.mux: UdpMux | None = None
        self._undo: Callable[[], None] | None = None

    async def start(self, lost_hooks: Collection[str]) -> None:
        """Bind the shared socket and install the hook (``lost_hooks``: names ``check()`` found
        missing; without the shared-port hook, ``--udp-port`` refuses to start)."""
        if self._udp_port is not None:
            if "shared UDP port" in lost_hooks:
                raise RuntimeError("--udp-port: this aioice cannot share a socket (see above)")
            self.mux = UdpMux(self._udp_port, self._host_addresses, self._on_drop)
            await self.mux.open()
            logger.info("media on UDP port %d for every peer connection", self._udp_port)
        if self.mux is not None or self._public_addresses:
            self._undo = install_ice_plan(self.mux, self._public_addresses)

    def entries(self) -> int:
        return self.mux.entries() if self.mux is not None else 0

    def stop(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None
        if self.mux is not None:
            self.mux.close()

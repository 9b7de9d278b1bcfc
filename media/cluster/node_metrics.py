"""``/metrics`` on the public port of ``hark serve --workers N``: every worker of the host.

The worker that takes the scrape reads each sibling's own metrics through its private HTTP socket
(asking with ``X-Hark-Scope: worker``, which answers that worker alone) and serves them together
with its own, every sample labelled ``worker="k"``; ``sum without (worker) (...)`` gives the
host's totals. ``hark_worker_up{worker="k"}`` is 0 for a worker that did not answer (one being
restarted), whose samples are then missing from that scrape.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterable, Mapping

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

SCOPE_HEADER = "X-Hark-Scope"
SCRAPE_TIMEOUT_S = 5.0


def wants_one_worker(headers: Mapping[str, str]) -> bool:
    return headers.get(SCOPE_HEADER, "").lower() == "worker"


async def node_exposition(
    own_index: int, own: bytes, siblings: Mapping[int, pathlib.Path]
) -> bytes:
    """This worker's exposition ``own`` merged with the siblings', read from their sockets."""
    indexes = list(siblings)
    scraped = await asyncio.gather(*(_scrape(siblings[k]) for k in indexes))
    texts = {own_index: own.decode()}
    texts.update((k, text) for k, text in zip(indexes, scraped, strict=True) if text is not None)
    up = Metric("hark_worker_up", "1 when the worker answered this scrape, else 0", "gauge")
    for k in sorted([own_index, *indexes]):
        up.add_sample("hark_worker_up", {"worker": str(k)}, 1.0 if k in texts else 0.0)
    return _render([up, *_labelled(texts)])


async def _scrape(socket: pathlib.Path) -> str | None:
    timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
    try:
        connector = aiohttp.UnixConnector(path=str(socket))
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            headers = {SCOPE_HEADER: "worker"}
            async with http.get("http://worker/metrics", headers=headers) as response:
                if response.status != 200:
                    return None
                return await response.text()
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None


def _labelled(texts: Mapping[int, str]) -> list[Metric]:
    families: dict[str, Metric] = {}
    for k in sorted(texts):
        for family in text_string_to_metric_families(texts[k]):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            merged.samples.extend(
                Sample(s.name, {**s.labels, "worker": str(k)}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            )
    return list(families.values())


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _render(families: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)

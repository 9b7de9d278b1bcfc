"""Real browsers for the interop tests, with no browser download and no WebDriver.

A test serves its own page from a ``ReportingSite`` (an aiohttp server on port 0, another origin
than Hark's), opens it in Debian's headless Firefox or Chromium, and reads what the page reports:
the page POSTs JSON to ``/report`` and the test awaits ``site.report(kind)``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import pathlib
import shutil
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp import web

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")
CHROMIUM = shutil.which("chromium")
FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
SDK = pathlib.Path(__file__).resolve().parents[2] / "media" / "static"


def require(binary: str | None, package: str) -> str:
    """The browser's path; a skip (a failure under CI) naming the Debian package when missing."""
    if binary is not None and os.path.exists(binary):
        return binary
    reason = f"Debian's {package} is not installed (make deps-debian installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run the browser tests", pytrace=False)
    pytest.skip(reason)


# Headless Firefox for tests: no first-run pages, no network beyond loopback, fake media devices
# granted without a prompt, and loopback ICE candidates (Firefox leaves them out by default).
FIREFOX_PREFS: Mapping[str, Any] = {
    "app.update.enabled": False,
    "app.update.auto": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.aboutwelcome.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "extensions.update.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "services.settings.server": "http://127.0.0.1:9/",
    "media.peerconnection.ice.loopback": True,
    "media.autoplay.default": 0,
    "media.autoplay.block-webaudio": False,
}


def firefox_profile(folder: pathlib.Path, *, microphone: bool) -> pathlib.Path:
    """A fresh profile; with ``microphone`` a fake one is granted without asking (and Firefox then
    offers IP host candidates), without it the page has no media permission (mDNS candidates)."""
    prefs = dict(FIREFOX_PREFS)
    if microphone:
        prefs["media.navigator.permission.disabled"] = True
        prefs["media.navigator.streams.fake"] = True
    profile = folder / "firefox-profile"
    profile.mkdir(parents=True, exist_ok=True)
    lines = [f"user_pref({json.dumps(k)}, {json.dumps(v)});" for k, v in prefs.items()]
    (profile / "user.js").write_text("\n".join(lines) + "\n")
    return profile


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
)


@contextlib.asynccontextmanager
async def open_browser(
    browser: str, url: str, folder: pathlib.Path, *, microphone: bool = False
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Open ``url`` in headless ``browser`` ("firefox" or "chromium"); closed on exit.

    Chromium without ``microphone`` keeps its defaults, mDNS host candidates included.
    """
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / f"{browser}.log").open("wb")
    if browser == "firefox":
        binary = require(FIREFOX, "firefox-esr")
        profile = firefox_profile(folder, microphone=microphone)
        args = [binary, "--headless", "--no-remote", "--profile", str(profile), url]
    elif browser == "chromium":
        binary = require(CHROMIUM, "chromium")
        args = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={folder / 'chromium-profile'}"]
        if microphone:
            args += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
        args.append(url)
    else:
        raise ValueError(f"unknown browser {browser!r}")
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=log, stderr=log, env={**os.environ, "MOZ_HEADLESS": "1"}
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


class ReportingSite:
    """Serves test pages and takes their reports: ``POST /report`` with ``{"kind": ..., ...}``.

    ``/fixtures/`` serves the committed fixtures and ``/static/`` Hark's static folder (the SDK
    among it), so a page on this origin imports Hark's SDK from another origin when it wants to.
    """

    def __init__(self, pages: Mapping[str, str]) -> None:
        self._pages = dict(pages)
        self._reports: dict[str, collections.deque[dict[str, Any]]] = collections.defaultdict(
            collections.deque
        )
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.base = ""

    async def __aenter__(self) -> ReportingSite:
        app = web.Application()
        app.router.add_post("/report", self._report)
        app.router.add_get("/page/{name}", self._page)
        app.router.add_static("/fixtures/", FIXTURES)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, page: str, **query: str) -> str:
        from urllib.parse import urlencode

        return f"{self.base}/page/{page}" + (f"?{urlencode(query)}" if query else "")

    async def report(self, kind: str, timeout: float = 30.0) -> dict[str, Any]:
        """The next report of ``kind``; a report of kind ``error`` fails the wait at once."""
        async with asyncio.timeout(timeout), self._arrived:
            while True:
                if self._reports["error"]:
                    raise AssertionError(f"the page reported an error: {self._reports['error']}")
                if self._reports[kind]:
                    return self._reports[kind].popleft()
                await self._arrived.wait()

    def reported(self, kind: str) -> list[dict[str, Any]]:
        """Every report of ``kind`` not yet taken by ``report()``."""
        return list(self._reports[kind])

    async def _report(self, request: web.Request) -> web.Response:
        body = await request.json()
        async with self._arrived:
            self._reports[str(body.get("kind", "unknown"))].append(body)
            self._arrived.notify_all()
        return web.Response(status=204, headers={"Access-Control-Allow-Origin": "*"})

    async def _page(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._pages:
            raise web.HTTPNotFound(text=f"no test page {name!r}")
        return web.Response(text=self._pages[name], content_type="text/html")

"""The browser SDK (``media/static/sdk``) at ``/sdk/{file}``, importable from any origin.

The SDK is public code, so every origin may load it (``Access-Control-Allow-Origin: *``) whatever
``--cors-origin`` says about the session endpoints; browsers cache it briefly, revalidating after.
"""

from __future__ import annotations

import pathlib
from typing import Final

from aiohttp import web

SDK_FOLDER: Final = pathlib.Path(__file__).parents[1] / "static" / "sdk"
CONTENT_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".ts": "application/typescript; charset=utf-8",
}
CACHE_CONTROL: Final = "public, max-age=300, must-revalidate"


def add_sdk_routes(app: web.Application) -> None:
    app.router.add_get("/sdk/{name}", serve_sdk_file)


async def serve_sdk_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    path = SDK_FOLDER / name
    content_type = CONTENT_TYPES.get(path.suffix)
    if content_type is None or "/" in name or name.startswith(".") or not path.is_file():
        raise web.HTTPNotFound(
            text=f"no SDK file {name[:60]!r}: try /sdk/hark.js or /sdk/hark.d.ts\n"
        )
    response = web.FileResponse(path)
    response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = CACHE_CONTROL
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response

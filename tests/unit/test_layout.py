"""The layout holds: small modules, and imports that only point down the layers.

Layers, lowest first: core < audio < rtc < server < web, rpc < cluster < client < cli < app. The
edges web/ and rpc/ sit side by side; web/ may use ``media.rpc.messages`` (the SSE mirror of the
gRPC events). The leaf utilities (errors, config, metrics, aio, logs and the generated v1 code)
may be imported from every layer but core/, so they import nothing above core/ themselves. core/
does no I/O: it imports only ``media.errors`` and ``media.core.*``, and nothing that talks to a
socket or an event loop.
"""

from __future__ import annotations

import ast
import pathlib
import re
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MEDIA = ROOT / "media"
MAX_LINES = 500
# compat.py holds every use of a private aiortc/aioice name, by rule, however many hooks there are:
# one file to read (and to check on an upgrade) is worth more there than the size limit.
LINE_LIMITS = {MEDIA / "rtc" / "compat.py": 650}

LAYERS = {
    "media.core": 0,
    "media.audio": 1,
    "media.rtc": 2,
    "media.server": 3,
    "media.web": 4,
    "media.rpc": 4,
    "media.cluster": 5,
    "media.client": 6,
    "media.cli": 7,
    "media.app": 8,
    "media.__main__": 9,  # python -m media: runs the composition root
    "media": 8,  # the package itself: its public API re-exports the SDK
}
LEAVES = (
    "media.errors",
    "media.config",
    "media.metrics",
    "media.aio",
    "media.logs",
    "media.binding",
    "media.v1",
)
CORE_MAY_IMPORT = ("media.errors", "media.core")
DOING_IO = (
    "asyncio",
    "aiortc",
    "aioice",
    "av",
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "aiohttp",
    "socket",
    "ssl",
    "selectors",
    "subprocess",
    "threading",
)
ALLOWED_ACROSS_THE_EDGES = {("media.web", "media.rpc.messages")}

# Violations tolerated while a change that removes them is under way; each entry must still
# occur (a test fails once it is gone, so the entry is deleted with the fix). None today.
KNOWN_VIOLATIONS: set[str] = set()


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted module name (or a name in it)
    line: int


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_generated(path: pathlib.Path) -> bool:
    return path.relative_to(MEDIA).parts[0] == "v1"


def media_modules() -> list[pathlib.Path]:
    return sorted(p for p in MEDIA.rglob("*.py") if not is_generated(p))


def imports_of(path: pathlib.Path) -> list[Import]:
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_in(source: str, name: str, is_package: bool) -> list[Import]:
    package = name if is_package else name.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found += [Import(name, _target(base, alias.name), node.lineno) for alias in node.names]
    return found


def _target(module: str, name: str) -> str:
    """``from media import errors`` imports ``media.errors``; ``from media import
    __version__`` takes a constant of the package, a leaf like the error tree."""
    if module == "media" and name == "__version__":
        return "media.errors"
    candidate = f"{module}.{name}"
    exists = (ROOT / candidate.replace(".", "/")).with_suffix(".py").exists() or (
        ROOT / candidate.replace(".", "/")
    ).is_dir()
    return candidate if exists else module


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_of(module: str) -> int | None:
    owners = [p for p in LAYERS if within(module, p)]
    return LAYERS[max(owners, key=len)] if owners else None


def is_leaf(module: str) -> bool:
    return any(within(module, leaf) for leaf in LEAVES)


def top_package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def violation(path: pathlib.Path, imported: Import) -> str | None:
    importer, target = imported.importer, imported.target
    where = f"{path.relative_to(ROOT)} imports {target}"
    if within(importer, "media.core"):
        if target.split(".")[0] in DOING_IO:
            return f"{where}: core/ does no I/O"
        if within(target, "media") and not any(within(target, p) for p in CORE_MAY_IMPORT):
            return f"{where}: core/ imports only media.errors and media.core"
        return None
    if not within(target, "media") or is_leaf(target):
        return None
    if is_leaf(importer):
        if within(target, "media.core"):
            return None
        return f"{where}: a leaf utility imports only core/ and other leaves"
    mine, theirs = layer_of(importer), layer_of(target)
    assert mine is not None and theirs is not None, f"{where}: no layer for it in LAYERS"
    if theirs > mine:
        return f"{where}: {top_package(importer)[6:]}/ is below {top_package(target)[6:]}"
    if theirs == mine and top_package(importer) != top_package(target):
        if (top_package(importer), target) not in ALLOWED_ACROSS_THE_EDGES:
            return f"{where}: the edges web/ and rpc/ do not use each other"
    return None


def violations_of(path: pathlib.Path) -> set[str]:
    found = {v for i in imports_of(path) if (v := violation(path, i)) is not None}
    lines = len(path.read_text().splitlines())
    limit = LINE_LIMITS.get(path, MAX_LINES)
    if lines > limit:
        found.add(f"{path.relative_to(ROOT)} has {lines} lines (over {limit})")
    return found


@pytest.mark.parametrize("path", media_modules(), ids=lambda p: str(p.relative_to(MEDIA)))
def test_each_module_is_small_and_imports_only_down_the_layers(path: pathlib.Path) -> None:
    assert violations_of(path) - KNOWN_VIOLATIONS == set()


def test_every_known_violation_still_occurs_until_it_is_fixed() -> None:
    found = set().union(*(violations_of(path) for path in media_modules()))
    assert KNOWN_VIOLATIONS - found == set(), "fixed: delete these from KNOWN_VIOLATIONS"


def test_the_checks_catch_what_they_are_for() -> None:
    """Each rule fires on a module that breaks it, read as if it sat at the path it names."""
    cases = {
        "media/core/x.py": "import asyncio\n",
        "media/core/y.py": "from media.metrics import Metrics\n",
        "media/core/z.py": "from ..rtc import player\n",
        "media/audio/x.py": "from media.rtc.player import PlayerPeer\n",
        "media/rpc/x.py": "from media.web import whip\n",
        "media/web/x.py": "from media.rpc.service import MediaService\n",
        "media/metrics.py": "from media.server.session_table import Registry\n",
        "media/cli/x.py": "import media.app\n",
    }
    for relative, source in cases.items():
        path = ROOT / relative
        imported = imports_in(source, module_name(path), is_package=False)
        assert any(violation(path, i) for i in imported), f"{relative}: {source!r} was not caught"
    allowed = {
        "media/web/x.py": "from media.rpc.messages import event_message\n",
        "media/rtc/x.py": "from ..core import sdp\nfrom media.metrics import Metrics\n",
        "media/metrics.py": "from media.core.events import SessionEvent\n",
        "media/core/x.py": "from media.errors import InvalidOffer\nfrom .events import Event\n",
    }
    for relative, source in allowed.items():
        path = ROOT / relative
        imported = imports_in(source, module_name(path), is_package=False)
        assert not [violation(path, i) for i in imported if violation(path, i)], relative


def modules_in_the_readme_table() -> set[str]:
    development = (ROOT / "README.md").read_text().split("## Development", 1)[1]
    return set(re.findall(r"^\|[^|\n]+\| `(media/[a-z_/]+\.py)` \|$", development, re.M))


def test_the_readme_names_the_module_of_every_concept_and_only_modules_that_exist() -> None:
    named = modules_in_the_readme_table()
    modules = {
        str(p.relative_to(ROOT))
        for p in media_modules()
        if p.name not in ("__init__.py", "__main__.py")
    }
    assert modules - named == set(), "add these to the README's Development table"
    assert named - modules == set(), "the README names modules that do not exist"

"""Every error Hark raises has a stable reason that gRPC clients and the README can rely on."""

from __future__ import annotations

import importlib
import pathlib
import pkgutil
import re

import media
from media.errors import HarkError, by_reason

README = pathlib.Path(__file__).parents[2] / "README.md"


def every_error_class() -> list[type[HarkError]]:
    for module in pkgutil.walk_packages(media.__path__, "media."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found: list[type[HarkError]] = []
    pending = [HarkError]
    while pending:
        kind = pending.pop()
        found.append(kind)
        pending.extend(kind.__subclasses__())
    return found


def test_every_error_class_has_its_own_reason() -> None:
    missing = [kind.__qualname__ for kind in every_error_class() if "REASON" not in vars(kind)]
    assert not missing, f"give these a REASON in media/errors.py style: {missing}"


def test_reasons_are_unique_stable_names_that_lead_back_to_their_class() -> None:
    kinds = every_error_class()
    reasons = [kind.REASON for kind in kinds]
    assert len(set(reasons)) == len(reasons), sorted(reasons)
    for kind in kinds:
        assert re.fullmatch(r"[A-Z][A-Z_]*[A-Z]", kind.REASON), kind
        assert by_reason(kind.REASON) is kind


def test_the_readme_lists_every_reason() -> None:
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", README.read_text(), re.MULTILINE))
    missing = {kind.REASON for kind in every_error_class()} - listed
    assert not missing, f"README's error reasons table lacks {sorted(missing)}"

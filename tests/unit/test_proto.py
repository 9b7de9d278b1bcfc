"""The committed generated code matches proto/ (run `make proto` when this fails)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    generated = sorted(p.name for p in (tmp_path / "media" / "v1").iterdir())
    committed = sorted(p.name for p in (ROOT / "media" / "v1").iterdir() if p.is_file())
    assert generated == committed
    stale = [
        name
        for name in generated
        if (tmp_path / "media" / "v1" / name).read_bytes()
        != (ROOT / "media" / "v1" / name).read_bytes()
    ]
    assert not stale, f"media/v1 is stale ({', '.join(stale)}): run `make proto` and commit"

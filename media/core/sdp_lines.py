"""SDP's line syntax, shared by offers and trickle-ICE fragments (RFC 8866 section 5): numbered
``x=value`` lines, ASCII numbers, and lines quoted short enough for an error message."""

from __future__ import annotations

import re

from media.errors import InvalidOffer, InvalidTrickle

_TYPED_LINE = re.compile(r"[a-z]=")
# ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
_DIGITS = re.compile(r"[0-9]{1,10}")


def quote(line: str) -> str:
    return repr(line if len(line) <= 80 else line[:77] + "...")


def ascii_int(text: str) -> int | None:
    return int(text) if _DIGITS.fullmatch(text) else None


def numbered_lines(text: str) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; CRLF or LF endings, trailing blanks ignored."""
    numbered = enumerate(text.split("\n"), start=1)
    return [(number, line.rstrip()) for number, line in numbered if line.strip()]


def split_typed_line(
    number: int, line: str, error: type[InvalidOffer | InvalidTrickle]
) -> tuple[str, str]:
    """``("a", "mid:0")`` for ``a=mid:0``; ``error`` naming the line when it is not ``x=value``."""
    if not _TYPED_LINE.match(line):
        raise error(f"line {number} is not of the form x=value: {quote(line)}")
    if len(line.splitlines()) > 1:  # a lone CR, a form feed...: where the WebRTC stack splits
        raise error(
            f"line {number} has a line break inside it (SDP lines end with CRLF): {quote(line)}"
        )
    return line[0], line[2:]

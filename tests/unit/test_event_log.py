"""The numbered event log and the resume token, without an event loop."""

from __future__ import annotations

import pytest

from media.core.event_log import (
    EventLog,
    Position,
    Replay,
    Resync,
    decode_token,
    encode_token,
)
from media.errors import InvalidRequest


def test_entries_are_numbered_from_one_and_the_oldest_fall_off() -> None:
    log: EventLog[str] = EventLog(3, "abc")
    assert [log.append(item) for item in "uvwxy"] == [1, 2, 3, 4, 5]
    assert log.first_seq == 3
    assert log.after(2) == [(3, "w"), (4, "x"), (5, "y")]
    assert log.after(4) == [(5, "y")]
    assert log.after(5) == []
    assert log.position() == Position("abc", 5)


def test_a_position_in_the_log_replays_exactly_what_came_after_it() -> None:
    log: EventLog[str] = EventLog(4, "abc")
    for item in "uvw":
        log.append(item)
    assert log.resume(Position("abc", 1)) == Replay([(2, "v"), (3, "w")])
    assert log.resume(Position("abc", 3)) == Replay([])
    assert log.resume(Position("abc", 0)) == Replay([(1, "u"), (2, "v"), (3, "w")])


def test_what_cannot_be_replayed_resyncs() -> None:
    log: EventLog[str] = EventLog(2, "abc")
    for item in "uvwx":
        log.append(item)
    assert isinstance(log.resume(None), Resync)
    assert isinstance(log.resume(Position("other", 3)), Resync), "another run of the process"
    assert isinstance(log.resume(Position("abc", None)), Resync), "snapshots not all delivered"
    assert isinstance(log.resume(Position("abc", 1)), Resync), "events 2 is gone"
    assert log.resume(Position("abc", 2)) == Replay([(3, "w"), (4, "x")])


def test_a_position_ahead_of_the_log_is_refused() -> None:
    log: EventLog[str] = EventLog(2, "abc")
    log.append("u")
    with pytest.raises(InvalidRequest, match="ahead") as ahead:
        log.resume(Position("abc", 2))
    assert ahead.value.field == "resume_token"


def test_each_run_draws_its_own_incarnation() -> None:
    assert EventLog[str](1).incarnation != EventLog[str](1).incarnation


def test_a_token_round_trips_every_owner() -> None:
    positions = {
        "node-a/0": Position("0a1b", 17),
        "node-a/1": Position("ff", None),
        "b/12": Position("c0ffee", 0),
    }
    token = encode_token(positions)
    assert decode_token(token) == positions
    assert decode_token("") == {}
    assert encode_token({}) == ""


@pytest.mark.parametrize(
    "token",
    ["x", "node/0=abc", "node/0=abc:", "node/0=ABC:1", "node/0=abc:1,", "Node/0=abc:1", "a=b:1"],
)
def test_a_malformed_token_is_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidRequest, match="resume_token") as bad:
        decode_token(token)
    assert bad.value.field == "resume_token"


def test_an_oversized_token_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(InvalidRequest, match="longer"):
        decode_token("a/0=1:1," * 10000)

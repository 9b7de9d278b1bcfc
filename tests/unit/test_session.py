"""The session state machine and event log, driven with explicit time and no event loop."""

from __future__ import annotations

import pytest

from media.core.events import CloseReason, ListeningChanged, SessionState, StateChanged
from media.core.load_governor import LoadGovernor
from media.core.session import Origin, Session, Timeouts
from media.errors import NotReady, PublisherExists, SessionClosed

TIMEOUTS = Timeouts(ready=10.0, media=5.0, session_ttl=60.0)


def new(now: float = 100.0, retain: int = 256) -> Session:
    return Session("s1", Origin.API, now, timeouts=TIMEOUTS, retain_events=retain)


def ready(session: Session, now: float = 100.0) -> Session:
    session.publisher_attached(now)
    session.transport_connected(now + 0.1)
    session.audio_decoded(now + 0.2)
    return session


def states(events: list) -> list[SessionState]:  # type: ignore[type-arg]
    return [e.payload.state for e in events if isinstance(e.payload, StateChanged)]


def test_a_new_session_starts_at_revision_one_in_state_new() -> None:
    session = new()
    assert session.state is SessionState.NEW
    assert session.revision == 1
    [created] = session.events_after(0) or []
    assert created.payload == StateChanged(SessionState.NEW, None)


def test_the_happy_path_moves_forward_with_revisions_rising_by_one() -> None:
    session = new()
    events = session.publisher_attached(101.0)
    events += session.transport_connected(101.5)
    events += session.audio_decoded(102.0)
    assert states(events) == [SessionState.CONNECTING, SessionState.CONNECTED, SessionState.READY]
    assert [e.revision for e in events] == [2, 3, 4]
    assert session.ready_time == 102.0


def test_ready_needs_decoded_audio_not_just_a_connected_transport() -> None:
    session = new()
    session.publisher_attached(101.0)
    session.transport_connected(101.5)
    assert session.state is SessionState.CONNECTED
    session.media_received(101.6)
    assert session.state is SessionState.CONNECTED


def test_audio_before_the_connected_report_still_passes_through_connected() -> None:
    session = new()
    session.publisher_attached(101.0)
    events = session.audio_decoded(101.2)
    assert states(events) == [SessionState.CONNECTED, SessionState.READY]
    assert session.transport_connected(101.3) == []


def test_repeated_reports_emit_nothing() -> None:
    session = ready(new())
    revision = session.revision
    assert session.transport_connected(200.0) == []
    assert session.audio_decoded(200.0) == []
    assert session.revision == revision


def test_a_second_publisher_is_refused() -> None:
    session = new()
    session.publisher_attached(101.0)
    with pytest.raises(PublisherExists, match="already has a publisher"):
        session.publisher_attached(102.0)


def test_listening_needs_ready_and_names_the_state() -> None:
    session = new()
    session.publisher_attached(101.0)
    with pytest.raises(NotReady, match="is CONNECTING, not READY"):
        session.set_listening(True, 101.1)


def test_listening_toggles_once_and_is_idempotent() -> None:
    session = ready(new())
    [on] = session.set_listening(True, 110.0)
    assert on.payload == ListeningChanged(True)
    assert session.set_listening(True, 110.1) == []
    [off] = session.set_listening(False, 111.0)
    assert off.payload == ListeningChanged(False)
    assert off.revision == on.revision + 1


def test_stopping_listening_before_ready_is_a_harmless_no_op() -> None:
    assert new().set_listening(False, 100.0) == []


@pytest.mark.parametrize("state_steps", [0, 1, 2, 3])
def test_closed_is_reachable_from_every_state(state_steps: int) -> None:
    session = new()
    steps = [session.publisher_attached, session.transport_connected, session.audio_decoded]
    for step in steps[:state_steps]:
        step(101.0)
    previous = session.state
    [closed] = session.close(CloseReason.API_END, "bye", 105.0)
    assert closed.payload == StateChanged(SessionState.CLOSED, previous, CloseReason.API_END, "bye")
    assert session.closed_time == 105.0


def test_closing_twice_changes_nothing_and_keeps_the_first_reason() -> None:
    session = ready(new())
    session.close(CloseReason.CLIENT_DELETE, "", 105.0)
    assert session.close(CloseReason.API_END, "", 106.0) == []
    assert session.close_reason is CloseReason.CLIENT_DELETE


def test_closing_ends_listening_and_closed_sessions_refuse_calls() -> None:
    session = ready(new())
    session.set_listening(True, 103.0)
    session.close(CloseReason.MEDIA_TIMEOUT, "no RTP", 104.0)
    assert not session.listening
    with pytest.raises(SessionClosed, match=r"CLOSED \(MEDIA_TIMEOUT\): no RTP"):
        session.set_listening(True, 105.0)
    with pytest.raises(SessionClosed):
        session.publisher_attached(105.0)


def test_expired_when_a_precreated_session_gets_no_publisher() -> None:
    session = new(now=100.0)
    assert session.due_timeout(159.9) is None
    reason, detail = session.due_timeout(160.0) or (None, "")
    assert reason is CloseReason.EXPIRED
    assert "60 s" in detail


def test_ready_timeout_counts_from_the_offer() -> None:
    session = new(now=100.0)
    session.publisher_attached(150.0)
    session.transport_connected(151.0)
    assert session.due_timeout(159.9) is None
    reason, detail = session.due_timeout(160.0) or (None, "")
    assert reason is CloseReason.READY_TIMEOUT
    assert "CONNECTED" in detail


def test_media_timeout_counts_from_the_last_rtp() -> None:
    session = ready(new(now=100.0))
    session.media_received(120.0)
    assert session.due_timeout(124.9) is None
    assert (session.due_timeout(125.0) or (None,))[0] is CloseReason.MEDIA_TIMEOUT
    session.audio_decoded(124.0)
    assert session.due_timeout(128.9) is None


def test_time_the_server_itself_was_stalled_does_not_count_towards_media_timeout() -> None:
    session = ready(new(now=100.0))
    session.media_received(120.0)
    governor = LoadGovernor(0.1)
    governor.observe(120.1, 0.0)
    governor.observe(124.5, 4.3)  # the loop was blocked from 120.2 to 124.5
    governor.observe(125.0, 0.4)
    assert session.due_timeout(125.5, governor.stalled_since) is None
    reason = (session.due_timeout(130.0, governor.stalled_since) or (None,))[0]
    assert reason is CloseReason.MEDIA_TIMEOUT, "a live loop still notices a silent publisher"


def test_closed_sessions_have_no_timeouts() -> None:
    session = new()
    session.close(CloseReason.API_END, "", 100.0)
    assert session.due_timeout(10_000.0) is None


def test_events_after_replays_exactly_what_was_missed() -> None:
    session = ready(new())
    replay = session.events_after(2)
    assert replay is not None
    assert [e.revision for e in replay] == [3, 4]
    assert session.events_after(session.revision) == []


def test_events_after_reports_when_the_log_no_longer_reaches_back() -> None:
    session = ready(new(retain=16))
    for i in range(20):
        session.set_listening(i % 2 == 0, 200.0 + i)
    assert session.revision == 24
    assert session.events_after(7) is None
    replay = session.events_after(8)
    assert replay is not None
    assert [e.revision for e in replay] == list(range(9, 25))


def test_snapshot_reflects_the_current_state() -> None:
    session = ready(new())
    session.set_listening(True, 104.0)
    snap = session.snapshot()
    assert (snap.state, snap.listening, snap.revision) == (SessionState.READY, True, 5)
    assert snap.ready_time == 100.2


def test_the_next_deadline_follows_the_state() -> None:
    session = new(now=100.0)
    assert session.next_deadline() == 160.0, "a pre-created session expires after its TTL"
    session.publisher_attached(150.0)
    assert session.next_deadline() == 160.0, "the offer starts the READY timeout"
    session.transport_connected(151.0)
    assert session.next_deadline() == 160.0
    session.audio_decoded(152.0)
    assert session.next_deadline() == 157.0, "READY: the media timeout from the last audio"
    session.audio_decoded(153.0)
    assert session.next_deadline() == 158.0
    session.close(CloseReason.API_END, "", 154.0)
    assert session.next_deadline() is None


def test_handle_timer_closes_once_the_deadline_is_reached_and_not_before() -> None:
    session = new(now=100.0)
    deadline = session.next_deadline()
    assert deadline is not None
    assert session.handle_timer(deadline - 0.1) == []
    assert session.state is SessionState.NEW
    events = session.handle_timer(deadline)
    assert states(events) == [SessionState.CLOSED]
    assert session.close_reason is CloseReason.EXPIRED
    assert session.handle_timer(deadline + 100) == [], "a closed session has no more timers"


def test_handle_timer_ends_a_publisher_that_never_becomes_ready() -> None:
    session = new(now=100.0)
    session.publisher_attached(101.0)
    assert session.handle_timer(110.9) == []
    events = session.handle_timer(111.0)
    assert states(events) == [SessionState.CLOSED]
    assert session.close_reason is CloseReason.READY_TIMEOUT


def test_a_stall_moves_the_media_deadline_on_until_media_arrives_again() -> None:
    session = ready(new(now=100.0))
    session.media_received(120.0)
    governor = LoadGovernor(0.1)
    governor.observe(124.5, 4.3)  # the loop was blocked from 120.2 to 124.5
    assert session.handle_timer(125.0, governor.stalled_since) == []
    deadline = session.next_deadline()
    assert deadline is not None and deadline > 129.0, "the stall does not count as silence"
    session.audio_decoded(126.0)
    assert session.next_deadline() == 131.0, "fresh media takes the credit back"
    events = session.handle_timer(131.0, governor.stalled_since)
    assert session.close_reason is CloseReason.MEDIA_TIMEOUT and events

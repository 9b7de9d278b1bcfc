"""The load governor: lag samples and explicit time in, overloaded or not out."""

from __future__ import annotations

from media.core.load_governor import LoadGovernor

TICK = 0.1


def feed(governor: LoadGovernor, start: float, seconds: float, lag: float) -> float:
    """Samples of a 100 ms timer firing ``lag`` late, for ``seconds``; returns the time after."""
    now = start
    while now < start + seconds:
        now += TICK + lag
        governor.observe(now, lag)
    return now


def test_a_loop_lagging_beyond_the_limit_for_the_window_is_overloaded() -> None:
    governor = LoadGovernor(0.1, window_s=2.0)
    now = feed(governor, 0.0, 5.0, 0.002)
    assert not governor.overloaded
    now = feed(governor, now, 1.0, 0.15)
    assert not governor.overloaded, "1 s of lag is not yet sustained over a 2 s window"
    now = feed(governor, now, 2.0, 0.15)
    assert governor.overloaded
    assert governor.state(now).mean_lag_s > 0.1


def test_a_single_spike_is_not_overload_but_a_stall_as_long_as_the_window_is() -> None:
    governor = LoadGovernor(0.1, window_s=2.0)
    now = feed(governor, 0.0, 5.0, 0.002)
    now += 0.5
    governor.observe(now, 0.4)  # one GC pause
    now = feed(governor, now, 1.0, 0.002)
    assert not governor.overloaded
    now += 2.5
    assert governor.observe(now, 2.4)  # the loop was blocked for 2.4 s
    assert governor.overloaded


def test_overload_clears_only_once_the_lag_falls_well_below_the_limit() -> None:
    governor = LoadGovernor(0.1, window_s=2.0)
    now = feed(governor, 0.0, 3.0, 0.2)
    assert governor.overloaded
    now = feed(governor, now, 3.0, 0.07)  # under the limit, but not by much
    assert governor.overloaded
    now = feed(governor, now, 3.0, 0.002)
    assert not governor.overloaded


def test_a_zero_limit_never_refuses_but_still_measures() -> None:
    governor = LoadGovernor(0.0)
    now = feed(governor, 0.0, 5.0, 1.0)
    assert not governor.overloaded
    assert governor.stalled_since(now - 4.0) > 3.0


def test_stalled_time_counts_only_what_came_after_the_start() -> None:
    governor = LoadGovernor(0.1)
    governor.observe(10.0, 0.05)
    governor.observe(13.0, 2.9)  # blocked from 10.1 to 13.0
    governor.observe(13.1, 0.0)
    assert round(governor.stalled_since(9.0), 6) == 2.95
    assert round(governor.stalled_since(12.0), 6) == 1.0
    assert governor.stalled_since(13.0) == 0.0


def admit(governor: LoadGovernor, now: float) -> bool:
    """What the registry does for a new session: ask, and count it when it may start."""
    if governor.may_admit(now):
        governor.admitted(now)
        return True
    return False


def test_a_cool_node_admits_every_arrival() -> None:
    governor = LoadGovernor(0.1, window_s=2.0, settle_s=2.0)
    now = feed(governor, 0.0, 3.0, 0.01)
    assert all(admit(governor, now + i * 0.1) for i in range(10))


def test_a_warm_node_admits_one_session_per_settle_time() -> None:
    governor = LoadGovernor(0.1, window_s=2.0, settle_s=2.0)
    now = feed(governor, 0.0, 3.0, 0.06)  # over half the limit, not over it
    assert not governor.overloaded and governor.warm(now)
    assert governor.may_admit(now) and governor.may_admit(now), "asking is not admitting"
    assert admit(governor, now)
    assert not admit(governor, now + 0.2), "the last one's cost does not show in the lag yet"
    assert not admit(governor, now + 1.9)
    assert admit(governor, now + 2.0)


def test_an_overloaded_node_admits_nothing_and_a_cooled_one_admits_again() -> None:
    governor = LoadGovernor(0.1, window_s=2.0, settle_s=2.0)
    now = feed(governor, 0.0, 3.0, 0.2)
    assert not admit(governor, now)
    now = feed(governor, now, 3.0, 0.002)
    assert admit(governor, now) and admit(governor, now + 0.1)


def test_a_zero_limit_admits_whatever_the_lag() -> None:
    governor = LoadGovernor(0.0)
    now = feed(governor, 0.0, 3.0, 1.0)
    assert admit(governor, now) and admit(governor, now)


def test_a_node_just_started_is_not_warm_from_its_own_start_up_work() -> None:
    governor = LoadGovernor(0.1, window_s=2.0, settle_s=2.0)
    now = feed(governor, 0.0, 1.0, 0.06)
    assert admit(governor, now) and admit(governor, now + 0.1)

"""Merging the WatchSessions of every member, without a network: messages in, messages out."""

from __future__ import annotations

from media.cluster.fanout import reach
from media.cluster.routing import Elsewhere, Here, Route, Unknown
from media.cluster.watch_merge import MergeState, answers_for, start_positions
from media.core.event_log import Position, decode_token, encode_token
from media.core.session_ids import Owner
from media.v1 import media_pb2 as pb

ME = Owner("a", 0)
SIBLING = Owner("a", 1)
NODE_B = Owner("b", 0)


def snapshot(
    session_id: str, state: int, revision: int, token: dict[str, Position]
) -> pb.SessionEvent:
    return pb.SessionEvent(
        session_id=session_id,
        revision=revision,
        snapshot=pb.Snapshot(session=pb.Session(id=session_id, state=state, revision=revision)),  # type: ignore[arg-type]
        resume_token=encode_token(token),
    )


def state_changed(
    session_id: str, state: int, revision: int, token: dict[str, Position]
) -> pb.SessionEvent:
    return pb.SessionEvent(
        session_id=session_id,
        revision=revision,
        state_changed=pb.StateChanged(state=state),  # type: ignore[arg-type]
        resume_token=encode_token(token),
    )


def heartbeat(token: dict[str, Position]) -> pb.SessionEvent:
    return pb.SessionEvent(heartbeat=pb.Heartbeat(), resume_token=encode_token(token))


def sid(owner: Owner, tail: str) -> str:
    return f"{owner.node}.{owner.worker}.{tail * 22}"


def test_a_source_speaks_only_for_its_own_owners() -> None:
    assert answers_for(ME, None, "a/0") and not answers_for(ME, None, "a/1")
    assert answers_for(ME, SIBLING, "a/1") and not answers_for(ME, SIBLING, "a/0")
    assert answers_for(ME, NODE_B, "b/0") and answers_for(ME, NODE_B, "b/3")
    assert not answers_for(ME, NODE_B, "a/0") and not answers_for(ME, NODE_B, "c/0")


def test_the_token_merges_every_source_and_ignores_what_a_source_says_of_others() -> None:
    merge = MergeState(ME, {})
    merge.apply(None, heartbeat({"a/0": Position("a0", 5)}), 0.0)
    out = merge.apply(
        NODE_B,
        snapshot(
            sid(NODE_B, "x"),
            pb.NEW,
            1,
            {"b/0": Position("b0", 7), "b/1": Position("b1", 2), "a/0": Position("ff", 1)},
        ),
        0.0,
    )
    assert len(out) == 1
    assert decode_token(out[0].resume_token) == {
        "a/0": Position("a0", 5),
        "b/0": Position("b0", 7),
        "b/1": Position("b1", 2),
    }


def test_heartbeats_move_the_position_without_a_message() -> None:
    merge = MergeState(ME, {})
    assert merge.apply(SIBLING, heartbeat({"a/1": Position("c", 3)}), 0.0) == []
    assert decode_token(merge.heartbeat(1.0).resume_token) == {"a/1": Position("c", 3)}


def test_an_owner_back_as_another_incarnation_closes_its_open_sessions_first() -> None:
    merge = MergeState(ME, {})
    old, done = sid(SIBLING, "o"), sid(SIBLING, "d")
    merge.apply(SIBLING, snapshot(old, pb.READY, 4, {"a/1": Position("c1", None)}), 0.0)
    merge.apply(SIBLING, snapshot(done, pb.NEW, 1, {"a/1": Position("c1", 9)}), 0.0)
    merge.apply(SIBLING, state_changed(done, pb.CLOSED, 2, {"a/1": Position("c1", 10)}), 0.0)
    fresh = sid(SIBLING, "f")
    out = merge.apply(SIBLING, snapshot(fresh, pb.NEW, 1, {"a/1": Position("c2", 3)}), 5.0)
    lost, passed = out
    assert lost.session_id == old and lost.revision == 5
    assert lost.state_changed.state == pb.CLOSED and lost.state_changed.previous == pb.READY
    assert lost.state_changed.close_reason == pb.NODE_LOST
    assert "restarted" in lost.state_changed.close_detail
    assert passed.session_id == fresh
    assert all(decode_token(m.resume_token) == {"a/1": Position("c2", 3)} for m in out)


def test_a_lost_node_closes_every_open_session_of_each_of_its_workers() -> None:
    merge = MergeState(ME, {"c/0": Position("c", 1)})
    b0, b1 = sid(Owner("b", 0), "p"), sid(Owner("b", 1), "q")
    merge.apply(NODE_B, snapshot(b0, pb.NEW, 1, {"b/0": Position("b0", 1)}), 0.0)
    merge.apply(NODE_B, snapshot(b1, pb.CONNECTED, 3, {"b/1": Position("b1", 1)}), 0.0)
    assert sorted(merge.open_ids(NODE_B)) == sorted([b0, b1])
    out = merge.lost(NODE_B, 1.0)
    assert sorted((m.session_id, m.revision) for m in out) == sorted([(b0, 2), (b1, 4)])
    assert all(m.state_changed.close_reason == pb.NODE_LOST for m in out)
    assert all(decode_token(m.resume_token) == {"c/0": Position("c", 1)} for m in out)
    assert merge.lost(NODE_B, 2.0) == [], "once"


def test_a_merge_for_another_node_starts_from_its_own_node_only() -> None:
    token = encode_token(
        {"a/0": Position("a", 1), "a/1": Position("c", 2), "b/0": Position("b", 3)}
    )
    assert start_positions(ME, "cluster", token).keys() == {"a/0", "a/1", "b/0"}
    assert start_positions(ME, "node", token).keys() == {"a/0", "a/1"}


class ListedRouter:
    """Lists what it is given at every scope (the fan-out must narrow it)."""

    def __init__(self, *owners: Owner) -> None:
        self.listed = [Elsewhere(owner, f"{owner.node}:{owner.worker}", "") for owner in owners]

    def route(self, session_id: str) -> Route:
        return Unknown()

    def others(self, scope: str) -> list[Elsewhere]:
        return self.listed

    def place(self) -> Here | Elsewhere:
        return Here()

    def lost(self) -> dict[str, Owner]:
        return {}


def test_a_call_reaches_each_sibling_directly_and_each_other_node_once() -> None:
    router = ListedRouter(ME, SIBLING, Owner("b", 0), Owner("b", 1), Owner("c", 2))
    reached = [(m.owner, scope) for m, scope in reach(router, ME, "cluster")]
    assert reached == [(SIBLING, "worker"), (Owner("b", 0), "node"), (Owner("c", 2), "node")]
    assert [(m.owner, s) for m, s in reach(router, ME, "node")] == [(SIBLING, "worker")]
    assert reach(router, ME, "worker") == []


def test_sessions_of_a_node_lost_before_the_stream_heard_of_it_come_as_closed_snapshots() -> None:
    open_here, closed_b = sid(NODE_B, "o"), sid(NODE_B, "c")
    merge = MergeState(ME, {"a/0": Position("a0", 1), "b/0": Position("b0", 4)})
    merge.apply(NODE_B, snapshot(open_here, pb.READY, 3, {"b/0": Position("b0", 5)}), 0.0)
    sessions = [
        pb.Session(id=i, state=pb.CLOSED, close_reason=pb.NODE_LOST) for i in (open_here, closed_b)
    ]
    out = merge.departed(sessions, True, 1.0)
    assert [(m.session_id, m.snapshot.resync) for m in out] == [(closed_b, True)]  # open: lost()'s
    assert decode_token(out[0].resume_token) == {"a/0": Position("a0", 1)}  # b left the token

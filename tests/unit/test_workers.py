"""A worker's router and its journal of session ids, without processes."""

from __future__ import annotations

import pathlib

import pytest

from media.cluster.journal import JournalEntry, read_journal
from media.cluster.routing import Elsewhere, Here, Unknown
from media.cluster.workers import WorkerRouter, WorkerSpec, take_over_journal
from media.config import Config, ConfigError
from media.core.clock import Clock
from media.core.events import CloseReason, SessionState
from media.core.session import Origin, Timeouts
from media.core.session_ids import Owner
from media.server.session_table import SessionTable
from tests.support import eventually

RUN_DIR = pathlib.Path("/run/hark-test")


def router(index: int = 0, count: int = 2) -> WorkerRouter:
    spec = WorkerSpec(index, count, RUN_DIR)
    return WorkerRouter(spec, Owner("node-a", index), lambda: "http://hark.example:8080")


def test_own_ids_are_here_and_a_siblings_go_to_its_private_sockets() -> None:
    worker0 = router(0)
    assert worker0.route(Owner("node-a", 0).new_session_id()) == Here()
    sibling = worker0.route(Owner("node-a", 1).new_session_id())
    assert sibling == Elsewhere(
        owner=Owner("node-a", 1),
        grpc_target="unix:/run/hark-test/w1.grpc.sock",
        http_base="http://hark.example:8080",
        http_socket="/run/hark-test/w1.http.sock",
    )
    assert router(1).route(Owner("node-a", 0).new_session_id()) == Elsewhere(
        Owner("node-a", 0),
        "unix:/run/hark-test/w0.grpc.sock",
        "http://hark.example:8080",
        "/run/hark-test/w0.http.sock",
    )


@pytest.mark.parametrize(
    "session_id",
    [
        Owner("node-a", 7).new_session_id(),  # worker 7 of 2
        Owner("node-a", 2).new_session_id(),
        Owner("node-b", 1).new_session_id(),  # another node, and no cluster
        "node-a.1",
        "../w1.grpc.sock",
        "",
    ],
)
def test_an_id_naming_no_worker_of_this_node_is_unknown(session_id: str) -> None:
    assert router(0).route(session_id) == Unknown()


def test_others_are_the_siblings_at_node_and_cluster_scope_and_none_at_worker_scope() -> None:
    worker1 = router(1, count=3)
    owners = [elsewhere.owner for elsewhere in worker1.others("node")]
    assert owners == [Owner("node-a", 0), Owner("node-a", 2)]
    assert [e.owner for e in worker1.others("cluster")] == owners
    assert worker1.others("worker") == []
    assert worker1.place() == Here()


def test_worker_k_takes_udp_port_plus_k_and_its_index_is_checked() -> None:
    config = Config(udp_port=40000, workers=2)
    assert WorkerSpec(1, 2, RUN_DIR).config_for(config).udp_port == 40001
    assert WorkerSpec(1, 2, RUN_DIR).config_for(Config(workers=2)).udp_port is None
    env = {"HARK_WORKER_INDEX": "1", "HARK_RUN_DIR": "/run/x"}
    assert WorkerSpec.from_env(config, env) == WorkerSpec(1, 2, pathlib.Path("/run/x"))
    assert WorkerSpec.from_env(config, {}) is None
    with pytest.raises(ConfigError, match="not a worker of 2"):
        WorkerSpec.from_env(config, {**env, "HARK_WORKER_INDEX": "2"})
    with pytest.raises(ConfigError, match="not a worker index"):
        WorkerSpec.from_env(config, {**env, "HARK_WORKER_INDEX": "-1"})


def table(owner: Owner) -> SessionTable:
    return SessionTable(
        Clock(), timeouts=Timeouts(10, 5, 60), closed_retention=60, max_sessions=10, owner=owner
    )


async def test_a_restarted_worker_answers_its_predecessors_open_sessions_as_node_lost(
    tmp_path: pathlib.Path,
) -> None:
    spec = WorkerSpec(1, 2, tmp_path)
    before = table(Owner("node-a", 1))
    journal = take_over_journal(spec, before)
    open_one = before.create(Origin.WHIP)
    pre_created = before.create(Origin.API)
    ended = before.create(Origin.API)
    before.close(ended.id, CloseReason.API_END)
    journal.close()  # the worker dies here: nothing more is written
    assert read_journal(spec.journal_path) == [
        JournalEntry(open_one.id, Origin.WHIP, None),
        JournalEntry(pre_created.id, Origin.API, None),
        JournalEntry(ended.id, Origin.API, CloseReason.API_END),
    ]

    after = table(Owner("node-a", 1))
    take_over_journal(spec, after).close()
    for lost in (open_one.id, pre_created.id):
        snapshot = after.get(lost).snapshot()
        assert snapshot.state is SessionState.CLOSED
        assert snapshot.close_reason is CloseReason.NODE_LOST
        assert "worker 1 of node node-a" in snapshot.close_detail
    assert after.get(ended.id).snapshot().close_reason is CloseReason.API_END
    assert after.get(pre_created.id).session.origin is Origin.API
    assert after.live_count() == 0
    await after.shutdown()
    await before.shutdown()


def test_a_torn_last_line_and_foreign_lines_are_skipped(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "w0.sessions"
    path.write_text(
        "open node-a.0.AAAAAAAAAAAAAAAAAAAAAAAA WHIP\n"
        "open node-a.0.BBBBBBBBBBBBBBBBBBBBBBBB NOPE\n"
        "closed node-a.0.AAAAAAAAAAAAAAAAAAAAAAAA LATER\n"
        "open node-a.0.CCCCCCCCCCCCCCCCCCCCCCCC AP"
    )
    assert read_journal(path) == [
        JournalEntry("node-a.0.AAAAAAAAAAAAAAAAAAAAAAAA", Origin.WHIP, None)
    ]
    assert read_journal(tmp_path / "missing") == []


async def test_the_journal_is_rewritten_from_the_sessions_held_once_it_grows(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("media.cluster.journal.COMPACT_AFTER_LINES", 4)
    sessions = SessionTable(
        Clock(), timeouts=Timeouts(10, 5, 60), closed_retention=0, max_sessions=10
    )
    journal = take_over_journal(WorkerSpec(0, 2, tmp_path), sessions)
    for _ in range(20):
        sessions.close(sessions.create(Origin.API).id, CloseReason.API_END)
        await eventually(lambda: not list(sessions.all()), "the closed session is forgotten")
    held = sessions.create(Origin.WHIP)
    lines = (tmp_path / "w0.sessions").read_text().splitlines()
    assert len(lines) <= 7, lines  # 41 lines had it never been rewritten
    assert read_journal(tmp_path / "w0.sessions")[-1] == JournalEntry(held.id, Origin.WHIP, None)
    journal.close()
    await sessions.shutdown()

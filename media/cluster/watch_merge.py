"""What a cluster-wide WatchSessions sends, given what each source sends it: the merged resume
token, the sessions each owner has open, and the ``CLOSED(NODE_LOST)`` events for those of an
owner that vanished or restarted. No I/O: messages in, messages out.

Sources are this process (``None``) and the members it fans out to. A member answers for the
owners of one worker (a sibling: its own owner) or of one node (another node: every worker of
it); only its positions for those owners are taken from its messages.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.timestamp_pb2 import Timestamp

from media.core.event_log import Positions, decode_token, encode_token
from media.core.session_ids import Owner, owner_of
from media.v1 import media_pb2 as pb


def answers_for(me: Owner, source: Owner | None, owner_key: str) -> bool:
    """Whether ``source`` (``None``: this process) speaks for the sessions of ``owner_key``."""
    if source is None:
        return owner_key == str(me)
    if source.node == me.node:
        return owner_key == str(source)
    return owner_key.partition("/")[0] == source.node


def owner_key_of(session_id: str) -> str | None:
    owner = owner_of(session_id)
    return None if owner is None else str(owner)


class MergeState:
    """The merged stream's position and the open sessions of every owner it has heard of."""

    def __init__(self, me: Owner, start: Positions) -> None:
        self.me = me
        self.positions: Positions = dict(start)
        self._open: dict[str, dict[str, tuple[int, int]]] = {}  # owner → id → (revision, state)

    @property
    def token(self) -> str:
        return encode_token(self.positions)

    def apply(
        self, source: Owner | None, message: pb.SessionEvent, now: float
    ) -> list[pb.SessionEvent]:
        """Take in one message of ``source``: what to send on (``message`` with the merged token,
        nothing for a heartbeat, preceded by ``NODE_LOST`` closes when an owner restarted)."""
        out: list[pb.SessionEvent] = []
        for owner_key, position in decode_token(message.resume_token).items():
            if not answers_for(self.me, source, owner_key):
                continue
            before = self.positions.get(owner_key)
            if before is not None and before.incarnation != position.incarnation:
                out += self._lost(owner_key, "restarted", now)
            self.positions[owner_key] = position
        if message.WhichOneof("payload") != "heartbeat":
            self._track(message)
            out.append(message)
        for sent in out:
            sent.resume_token = self.token
        return out

    def lost(self, source: Owner, now: float) -> list[pb.SessionEvent]:
        """``CLOSED(NODE_LOST)`` for every open session of the owners ``source`` spoke for; they
        are forgotten (a later stream of theirs starts over)."""
        out: list[pb.SessionEvent] = []
        owners = set(self._open) | set(self.positions)
        for owner_key in sorted(owners):
            if answers_for(self.me, source, owner_key):
                out += self._lost(owner_key, "left the cluster", now)
                self.positions.pop(owner_key, None)
        for message in out:
            message.resume_token = self.token
        return out

    def departed(
        self, closed: Iterable[pb.Session], resync: bool, now: float
    ) -> list[pb.SessionEvent]:
        """A snapshot of each of ``closed``, sessions of owners that left the cluster before this
        stream heard of it (``resync``: its token named them, so it missed their end); those
        owners leave the token. Open sessions are left to ``lost``, which knows their revision."""
        out: list[pb.SessionEvent] = []
        for session in closed:
            owner_key = owner_key_of(session.id)
            if owner_key is None or session.id in self._open.get(owner_key, {}):
                continue
            self.positions.pop(owner_key, None)
            snapshot = pb.Snapshot(session=session, resync=resync)
            out.append(
                pb.SessionEvent(session_id=session.id, time=_timestamp(now), snapshot=snapshot)
            )
        for message in out:
            message.resume_token = self.token
        return out

    def open_ids(self, source: Owner) -> list[str]:
        """The open sessions of the owners ``source`` speaks for."""
        return [
            session_id
            for owner_key, sessions in self._open.items()
            if answers_for(self.me, source, owner_key)
            for session_id in sessions
        ]

    def heartbeat(self, now: float) -> pb.SessionEvent:
        return pb.SessionEvent(
            time=_timestamp(now), heartbeat=pb.Heartbeat(), resume_token=self.token
        )

    def _track(self, message: pb.SessionEvent) -> None:
        owner_key = owner_key_of(message.session_id)
        if owner_key is None:
            return
        sessions = self._open.setdefault(owner_key, {})
        kind = message.WhichOneof("payload")
        state = None
        if kind == "snapshot":
            state = message.snapshot.session.state
        elif kind == "state_changed":
            state = message.state_changed.state
        if state == pb.CLOSED:
            sessions.pop(message.session_id, None)
        elif state is not None:
            sessions[message.session_id] = (message.revision, state)
        elif message.session_id in sessions:
            sessions[message.session_id] = (message.revision, sessions[message.session_id][1])

    def _lost(self, owner_key: str, what: str, now: float) -> list[pb.SessionEvent]:
        sessions = self._open.pop(owner_key, {})
        node, _, worker = owner_key.partition("/")
        detail = f"node {node} (worker {worker}) {what}"
        return [
            pb.SessionEvent(
                session_id=session_id,
                revision=revision + 1,
                time=_timestamp(now),
                state_changed=pb.StateChanged(
                    state=pb.CLOSED,
                    previous=state,  # type: ignore[arg-type]
                    close_reason=pb.NODE_LOST,
                    close_detail=detail,
                ),
            )
            for session_id, (revision, state) in sessions.items()
        ]


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def start_positions(me: Owner, scope: str, token: str) -> Positions:
    """The positions a merge at ``scope`` starts from: the request's, for the owners it covers."""
    positions = decode_token(token)
    if scope == "cluster":
        return positions
    return {key: pos for key, pos in positions.items() if key.partition("/")[0] == me.node}

import dataclasses

from media.cluster.directory import NodeRecord
from media.cluster.node_router import node_load
from media.core.placement import NodeLoad, choose_node

RECORD = NodeRecord(
    id="alpha",
    public_url="https://alpha.hark.internal:8080",
    grpc_address="alpha.hark.internal:50051",
    state="SERVING",
    sessions=3,
    capacity=40,
    cpu=12.5,
    loop_lag_ms=1.5,
    overloaded=False,
    workers=2,
    updated=1764558000.25,
    started=1764550000.0,
)


def test_a_record_is_plain_text_fields_and_reads_back_the_same() -> None:
    fields = RECORD.fields()
    assert fields["state"] == "SERVING" and fields["sessions"] == "3"
    assert fields["overloaded"] == "0" and fields["cpu"] == "12.5"
    assert NodeRecord.from_fields(fields) == RECORD


def test_a_hash_hark_did_not_write_is_no_record() -> None:
    fields = RECORD.fields()
    assert NodeRecord.from_fields({**fields, "sessions": "many"}) is None
    del fields["grpc_address"]
    assert NodeRecord.from_fields(fields) is None


def test_placement_sees_a_draining_node_as_taking_nothing() -> None:
    fields = {**RECORD.fields(), "state": "DRAINING"}
    record = NodeRecord.from_fields(fields)
    assert record is not None and not record.load().has_room
    assert RECORD.load().has_room


def test_each_worker_of_a_node_is_its_own_member() -> None:
    worker = dataclasses.replace(RECORD, worker=1)
    assert worker.member == "alpha.1" and RECORD.member == "alpha.0"
    assert NodeRecord.from_fields(worker.fields()) == worker
    alone = dataclasses.replace(RECORD, workers=1)
    assert alone.member == "alpha"


def test_placement_counts_every_worker_of_a_node() -> None:
    beta = [
        dataclasses.replace(RECORD, id="beta", worker=0, sessions=3, capacity=10),
        dataclasses.replace(RECORD, id="beta", worker=1, sessions=9, capacity=10),
    ]
    gamma = dataclasses.replace(RECORD, id="gamma", workers=1, sessions=5, capacity=10)
    loads = [node_load(beta), node_load([gamma])]
    assert loads[0] == NodeLoad("beta", serving=True, sessions=12, capacity=20)
    full_here = NodeLoad("alpha", serving=True, sessions=10, capacity=10)
    assert choose_node(full_here, loads) == "gamma"  # 12/20 used on beta, 5/10 on gamma
    draining = [dataclasses.replace(record, state="DRAINING") for record in beta]
    assert not node_load(draining).has_room

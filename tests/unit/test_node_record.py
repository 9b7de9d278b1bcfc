from media.cluster.directory import NodeRecord

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

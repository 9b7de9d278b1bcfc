from media.core.placement import NodeLoad, choose_node


def load(node: str, sessions: int = 0, capacity: int = 10, **kwargs: bool) -> NodeLoad:
    return NodeLoad(
        node, kwargs.get("serving", True), sessions, capacity, kwargs.get("overloaded", False)
    )


def test_the_local_node_keeps_new_sessions_while_it_has_room() -> None:
    assert choose_node(load("a", 9), [load("b", 0), load("c", 1)]) == "a"


def test_a_full_local_node_places_on_the_least_filled_other() -> None:
    others = [load("b", 5, 10), load("c", 9, 100), load("d", 1, 2)]
    assert choose_node(load("a", 10), others) == "c"


def test_ties_go_to_fewer_sessions_then_the_smaller_id() -> None:
    assert choose_node(load("a", 1, 1), [load("c", 2, 4), load("b", 1, 2)]) == "b"
    assert choose_node(load("a", 1, 1), [load("c", 1, 2), load("b", 1, 2)]) == "b"


def test_draining_or_overloaded_nodes_take_nothing() -> None:
    local = load("a", 0, serving=False)
    others = [load("b", 0, overloaded=True), load("c", 9, serving=False), load("d", 3)]
    assert choose_node(local, others) == "d"
    assert choose_node(load("a", 0, overloaded=True), [load("b", 2)]) == "b"


def test_no_room_anywhere_places_nowhere() -> None:
    assert choose_node(load("a", 1, 1), [load("b", 2, 2), load("c", 0, serving=False)]) is None
    assert choose_node(load("a", 1, 1), []) is None


def test_a_record_of_the_local_node_among_the_others_is_not_a_second_chance() -> None:
    assert choose_node(load("a", 1, 1), [load("a", 0, 1)]) is None

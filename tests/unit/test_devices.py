from sandbox.devices import allow_list
from sandbox.limits import Rule


def test_rules_are_the_nodes_given_and_the_private_pts() -> None:
    rules = allow_list(((False, 1, 3), (True, 254, 0), (False, 1, 3)))
    assert [r.text() for r in rules] == ["c 1:3 rwm", "b 254:0 rwm", "c 5:2 rwm", "c 136:* rwm"]


def test_nothing_given_allows_only_the_terminals() -> None:
    assert allow_list(()) == (Rule("c", 5, 2), Rule("c", 136, None))

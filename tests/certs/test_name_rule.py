"""One rule for cell names and DNS labels (`certs.names`), applied alike everywhere.

The certificates (`validate_cell_name`), the records (`meshcore.model.check_cell_name`,
`check_dns_label`) and meshctl's context names (`check_context_name`) accept exactly the same
names; only their messages differ.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from certs import CertInputError, validate_cell_name
from certs.names import MAX_CELL_NAME, MAX_DNS_LABEL, is_cell_name, is_dns_label
from meshcore.model import check_cell_name, check_dns_label
from meshctl.contexts import InvalidContextError, check_context_name


def _names() -> list[str]:
    short = ["".join(p) for n in range(4) for p in itertools.product("a0-.A_é\n", repeat=n)]
    edges = [c * n for c in "a9" for n in (31, 32, 33, 62, 63, 64)]
    return [*short, *edges, "cell-a", "a--b", "x" * 32 + "\n"]


NAMES = _names()


def accepts(check: Callable[[str], str], errors: type[Exception], name: str) -> bool:
    try:
        check(name)
    except errors:
        return False
    return True


def test_the_cell_name_rule_is_one_rule() -> None:
    for name in NAMES:
        rule = is_cell_name(name)
        assert accepts(validate_cell_name, CertInputError, name) is rule, name
        assert accepts(check_cell_name, ValueError, name) is rule, name
        assert rule is (is_dns_label(name) and len(name) <= MAX_CELL_NAME), name


def test_the_dns_label_rule_is_one_rule() -> None:
    for name in NAMES:
        rule = is_dns_label(name)
        assert accepts(check_dns_label, ValueError, name) is rule, name
        assert accepts(check_context_name, InvalidContextError, name) is rule, name


@pytest.mark.parametrize(
    ("name", "label", "cell"),
    [
        ("a", True, True),
        ("a" * MAX_CELL_NAME, True, True),
        ("a" * (MAX_CELL_NAME + 1), True, False),
        ("a" * MAX_DNS_LABEL, True, False),
        ("a" * (MAX_DNS_LABEL + 1), False, False),
        ("", False, False),
        ("-a", False, False),
        ("a-", False, False),
        ("A", False, False),
        ("a\n", False, False),
    ],
)
def test_rule_edges(name: str, label: bool, cell: bool) -> None:
    assert (is_dns_label(name), is_cell_name(name)) == (label, cell)

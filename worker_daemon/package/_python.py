"""Does this interpreter meet a package's `requires-python` (PEP 440 release specifiers)?"""

from __future__ import annotations

import re
from itertools import zip_longest

_CLAUSE = re.compile(r"^\s*(~=|===|==|!=|<=|>=|<|>)\s*(\d+(?:\.\d+)*)(\.\*)?\s*$")


def _compare(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    for x, y in zip_longest(a, b, fillvalue=0):
        if x != y:
            return -1 if x < y else 1
    return 0


def _clause_holds(clause: str, version: tuple[int, ...]) -> bool:
    match = _CLAUSE.match(clause)
    if match is None or (match.group(3) and match.group(1) not in ("==", "!=")):
        raise ValueError(f"cannot read the version specifier {clause.strip()!r}")
    operator, text, wildcard = match.groups()
    wanted = tuple(int(part) for part in text.split("."))
    if operator == "===":
        return ".".join(map(str, version)) == text
    if wildcard:
        matches = _compare(version[: len(wanted)], wanted) == 0
        return matches if operator == "==" else not matches
    order = _compare(version, wanted)
    if operator == "~=":
        if len(wanted) < 2:
            raise ValueError(f"'~=' needs at least two version parts, got {clause.strip()!r}")
        return order >= 0 and _compare(version[: len(wanted) - 1], wanted[:-1]) == 0
    return {
        "==": order == 0,
        "!=": order != 0,
        "<=": order <= 0,
        ">=": order >= 0,
        "<": order < 0,
        ">": order > 0,
    }[operator]


def python_satisfies(specifier: str, version: tuple[int, ...]) -> bool:
    """Whether `version` (e.g. (3, 11, 7)) meets every comma-separated clause of `specifier`.

    Release versions only, which is what interpreters report; ValueError when unreadable.
    """
    return all(_clause_holds(clause, version) for clause in specifier.split(","))

"""requires-python checks against the running interpreter's version."""

from __future__ import annotations

import pytest

from worker_daemon.package._python import python_satisfies


@pytest.mark.parametrize(
    ("specifier", "version", "expected"),
    [
        (">=3.11", (3, 11, 7), True),
        (">=3.12", (3, 11, 7), False),
        (">=3.10, <4", (3, 11, 7), True),
        (">=3.10,<3.11", (3, 11, 7), False),
        ("==3.11.*", (3, 11, 7), True),
        ("==3.1.*", (3, 11, 7), False),
        ("!=3.11.*", (3, 11, 7), False),
        ("==3.11", (3, 11, 7), False),
        ("==3.11.7", (3, 11, 7), True),
        ("~=3.11", (3, 12, 0), True),
        ("~=3.11.2", (3, 12, 0), False),
        ("~=3.11.2", (3, 11, 9), True),
        (">3.11", (3, 11, 7), True),
        ("<3.11", (3, 11, 7), False),
        ("<=3.11.7", (3, 11, 7), True),
        ("===3.11.7", (3, 11, 7), True),
    ],
)
def test_specifiers(specifier: str, version: tuple[int, ...], expected: bool) -> None:
    assert python_satisfies(specifier, version) is expected


@pytest.mark.parametrize("specifier", ["3.11", ">=3.11b1", "~=3", ">=3.*", ""])
def test_unreadable_specifiers_raise(specifier: str) -> None:
    with pytest.raises(ValueError, match=r"cannot read|two version parts"):
        python_satisfies(specifier, (3, 11, 7))

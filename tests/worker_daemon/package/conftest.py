"""Package tests import handler modules: give each test its own sys.path and modules back."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def isolated_imports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Undo sys.path changes and forget modules imported from the tests' temp folders."""
    path = list(sys.path)
    before = set(sys.modules)
    temp_root = str(tmp_path_factory.getbasetemp())
    yield
    sys.path[:] = path
    for name in set(sys.modules) - before:
        if (getattr(sys.modules[name], "__file__", None) or "").startswith(temp_root):
            del sys.modules[name]

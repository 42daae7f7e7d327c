"""The handler source of a deployment, read back from its stored package, and a
side-by-side diff of two versions' sources (for the service page)."""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass

from apps.common.errors import DomainError
from apps.services.artifacts import artifact_open
from apps.services.models import Deployment
from apps.services.packages import ENTRY_MAX_BYTES, package_limits
from memrun.errors import PackageRejected
from memrun.wire.archive import open_tar

# Lines of unchanged context kept around each change.
DIFF_CONTEXT_LINES = 3


@dataclass(frozen=True)
class DiffRow:
    """One row of a side-by-side diff: a line number and text per side (None: no line
    there), and the kind: "equal", "replace", "delete", "insert", or "skip" (a gap of
    unchanged lines left out)."""

    kind: str
    left_no: int | None
    left: str
    right_no: int | None
    right: str


def deployment_source(*, deployment: Deployment) -> str:
    """The text of the deployment's entry module, from its stored package."""
    entry = str(deployment.manifest.get("entry", ""))
    try:
        with (
            contextlib.closing(artifact_open(url=deployment.artifact_url)) as stream,
            open_tar(stream, package_limits()) as reader,
        ):
            for member in reader.members():
                if member.name == entry and member.size <= ENTRY_MAX_BYTES:
                    return b"".join(reader.data(member)).decode("utf-8", errors="replace")
    except PackageRejected as exc:
        raise DomainError(
            f"the package of v{deployment.version} cannot be read: {exc.message}", status=409
        ) from None
    raise DomainError(
        f"the package of v{deployment.version} holds no readable entry module {entry!r}",
        status=409,
        details={"version": deployment.version},
    )


def source_diff(*, left: str, right: str) -> list[DiffRow]:
    """Side-by-side rows from `left` to `right`; long unchanged stretches are folded."""
    old, new = left.splitlines(), right.splitlines()
    rows: list[DiffRow] = []
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for group in matcher.get_grouped_opcodes(DIFF_CONTEXT_LINES):
        if rows:
            rows.append(DiffRow("skip", None, "", None, ""))
        for tag, i1, i2, j1, j2 in group:
            for offset in range(max(i2 - i1, j2 - j1)):
                i, j = i1 + offset, j1 + offset
                in_left, in_right = i < i2, j < j2
                rows.append(
                    DiffRow(
                        tag,
                        i + 1 if in_left else None,
                        old[i] if in_left else "",
                        j + 1 if in_right else None,
                        new[j] if in_right else "",
                    )
                )
    return rows

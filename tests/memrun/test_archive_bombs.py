"""Safe package reading (I7): decompression bombs stop at the caps, in bounded memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from memrun.wire.archive import PackageLimits
from tests.memrun.archives import GiB, assert_refused, gzip_members, header, zeros_gzip


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """10 GiB of zeros in ~10 MB, three ways: one huge member, many members, no tar at all."""
    root = tmp_path_factory.mktemp("bombs")
    paths = {name: root / f"{name}.tar.gz" for name in ("one-member", "many-members", "raw-zeros")}
    paths["one-member"].write_bytes(
        gzip_members([header("big.bin", 10 * GiB)]) + zeros_gzip(10 * GiB)
    )
    with paths["many-members"].open("wb") as out:
        for index in range(40):
            out.write(gzip_members([header(f"part{index:02d}.bin", GiB // 4)]))
            out.write(zeros_gzip(GiB // 4))
    paths["raw-zeros"].write_bytes(zeros_gzip(10 * GiB))
    for path in paths.values():
        assert path.stat().st_size < 12 * 2**20
    return paths


def test_bomb_declaring_one_huge_member_is_refused_from_its_header(
    tmp_path: Path, bombs: dict[str, Path]
) -> None:
    assert_refused(tmp_path, bombs["one-member"].read_bytes(), "file_too_large", "10737418240")


@pytest.mark.parametrize(
    ("bomb", "phrase"), [("many-members", "add up to"), ("raw-zeros", "inflates past")]
)
def test_bomb_stops_at_the_inflated_cap(
    tmp_path: Path, bombs: dict[str, Path], bomb: str, phrase: str
) -> None:
    limits = PackageLimits(max_inflated_bytes=64 * 2**20)
    assert_refused(tmp_path, bombs[bomb].read_bytes(), "inflated_too_large", phrase, limits)


MEASURE = """
import resource, sys, time
from pathlib import Path
from memrun.wire.archive import inspect_package
from memrun.errors import PackageRejected
before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
try:
    inspect_package(Path(sys.argv[1]))
    print("accepted")
except PackageRejected as exc:
    print(exc.reason)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kib)
print(time.monotonic() - started)
"""


def test_bomb_under_default_limits_keeps_memory_bounded(bombs: dict[str, Path]) -> None:
    """10 GiB in 256 MiB members: inflation stops at 1 GiB, peak RSS barely moves."""
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(bombs["many-members"])],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    reason, growth_kib, seconds = result.stdout.split()
    assert reason == "inflated_too_large"
    assert int(growth_kib) < 32 * 1024, f"peak RSS grew by {growth_kib} KiB"
    assert float(seconds) < 60

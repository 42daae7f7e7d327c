"""The completion tracker never lets a commit pass an unfinished message (invariant I2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker_daemon.offsets import CommitPolicy, PartitionTracker


@st.composite
def schedules(draw: st.DrawFn) -> tuple[list[int], list[tuple[str, int]]]:
    """Increasing offsets with gaps, and an interleaving of submits and finishes in which
    each offset is finished once, after it was submitted, in any order."""
    gaps = draw(st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=60))
    start = draw(st.integers(min_value=0, max_value=10**12))
    offsets = []
    for gap in gaps:
        offsets.append(start)
        start += gap
    steps: list[tuple[str, int]] = []
    submitted: list[int] = []
    pending_submit = list(offsets)
    while pending_submit or submitted:
        if pending_submit and (not submitted or draw(st.booleans())):
            offset = pending_submit.pop(0)
            submitted.append(offset)
            steps.append(("submit", offset))
        else:
            index = draw(st.integers(min_value=0, max_value=len(submitted) - 1))
            steps.append(("finish", submitted.pop(index)))
    return offsets, steps


@settings(max_examples=300)
@given(schedules())
def test_committable_is_the_end_of_the_finished_prefix(
    schedule: tuple[list[int], list[tuple[str, int]]],
) -> None:
    offsets, steps = schedule
    tracker = PartitionTracker("t", 0)
    submitted: list[int] = []
    finished: set[int] = set()
    for action, offset in steps:
        if action == "submit":
            tracker.submitted(offset)
            submitted.append(offset)
        else:
            tracker.finished(offset)
            finished.add(offset)
        prefix = 0
        while prefix < len(submitted) and submitted[prefix] in finished:
            prefix += 1
        expected = submitted[prefix - 1] + 1 if prefix else -1
        assert tracker.committable == expected
        # Never past an unfinished message:
        assert all(o in finished for o in submitted if o < tracker.committable)
        assert tracker.unfinished == len(submitted) - len(finished)
    assert tracker.committable == offsets[-1] + 1
    assert tracker.outstanding == 0


def test_a_duplicate_completion_changes_nothing() -> None:
    tracker = PartitionTracker("t", 0)
    for offset in (5, 6, 7):
        tracker.submitted(offset)
    tracker.finished(5)
    tracker.finished(5)
    assert tracker.committable == 6
    tracker.finished(7)
    assert tracker.committable == 6
    tracker.finished(6)
    assert tracker.committable == 8


def test_offsets_must_increase() -> None:
    tracker = PartitionTracker("t", 3)
    tracker.submitted(10)
    with pytest.raises(ValueError, match="must increase"):
        tracker.submitted(10)


def test_needs_commit_only_when_the_prefix_moved_past_the_last_commit() -> None:
    tracker = PartitionTracker("t", 0)
    assert not tracker.needs_commit()
    tracker.submitted(0)
    tracker.finished(0)
    assert tracker.needs_commit()
    tracker.committed = tracker.committable
    assert not tracker.needs_commit()


def test_commit_policy_is_due_after_its_interval() -> None:
    policy = CommitPolicy(interval_s=1.0)
    assert not policy.due(last_commit_s=10.0, now_s=10.5)
    assert policy.due(last_commit_s=10.0, now_s=11.0)

"""The eviction policy alone: LRU order, promotion, scan resistance, ghosts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker_daemon.cache.policy import SegmentedLru


def evict_until_fits(
    policy: SegmentedLru, sizes: dict[str, int], capacity: int, incoming: int
) -> list[str]:
    evicted = []
    while sum(sizes.values()) + incoming > capacity:
        victim = policy.next_victim(incoming_probation_bytes=incoming)
        assert victim is not None
        policy.evict(victim)
        del sizes[victim]
        evicted.append(victim)
    return evicted


def test_objects_seen_once_leave_in_insertion_order() -> None:
    policy = SegmentedLru(capacity_bytes=100, probation_fraction=0.1, ghost_entries=10)
    for url in "abcd":
        policy.add(url, 10)
    assert [policy.next_victim(incoming_probation_bytes=10) for _ in range(1)] == ["a"]
    policy.evict("a")
    assert policy.next_victim(incoming_probation_bytes=10) == "b"


def test_a_second_access_protects_against_a_scan() -> None:
    capacity = 100
    policy = SegmentedLru(capacity_bytes=capacity, probation_fraction=0.1, ghost_entries=10)
    sizes: dict[str, int] = {}
    for url in ("hot1", "hot2"):
        policy.add(url, 5)
        policy.touch(url)
        sizes[url] = 5
    for i in range(20):
        url = f"scan{i}"
        evict_until_fits(policy, sizes, capacity, 40)
        policy.add(url, 40)
        sizes[url] = 40
    assert {"hot1", "hot2"} <= sizes.keys()


def test_a_ghost_comes_back_protected() -> None:
    policy = SegmentedLru(capacity_bytes=100, probation_fraction=0.1, ghost_entries=10)
    policy.add("a", 50)
    policy.evict("a")
    assert policy.is_ghost("a")
    assert policy.add("a", 50) is True
    assert policy.is_protected("a") and not policy.is_ghost("a")


def test_protected_objects_leave_least_recently_used_first() -> None:
    policy = SegmentedLru(capacity_bytes=100, probation_fraction=0.1, ghost_entries=10)
    for url in "abc":
        policy.add(url, 30, protected=True)
    policy.touch("a")
    assert policy.next_victim(incoming_probation_bytes=0) == "b"


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 60)), max_size=200))
def test_byte_totals_match_what_is_held(ops: list[tuple[int, int]]) -> None:
    capacity = 100
    policy = SegmentedLru(capacity_bytes=capacity, probation_fraction=0.1, ghost_entries=8)
    sizes: dict[str, int] = {}
    for n, size in ops:
        url = f"u{n}"
        if url in sizes:
            policy.touch(url)
            continue
        evict_until_fits(policy, sizes, capacity, 0 if policy.is_ghost(url) else size)
        while sum(sizes.values()) + size > capacity:
            victim = policy.next_victim(incoming_probation_bytes=0)
            assert victim is not None
            policy.evict(victim)
            del sizes[victim]
        policy.add(url, size)
        sizes[url] = size
        assert policy.probation_bytes + policy.protected_bytes == sum(sizes.values())
        assert sum(sizes.values()) <= capacity

"""Tier 1: named objects for the worker's lifetime, decoded values within a byte budget."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker_daemon.cache import Tier, WarmCache
from worker_daemon.cache.objects import decoded_key
from worker_daemon.cache.sizing import measure_size_bytes

MiB = 2**20


def read_text(path: Path) -> str:
    return path.read_text()


def test_named_objects_live_for_the_cache_lifetime(open_cache: Callable[..., WarmCache]) -> None:
    cache = open_cache(memory_budget_bytes=1000)
    model = {"weights": [1, 2, 3]}
    cache.set_object("model", model, size_bytes=5000)
    assert cache.get_object("model") is model
    assert cache.get_object("missing", default="fallback") == "fallback"
    assert cache.stats()["memory"]["named_bytes"] == 5000


def test_decoded_value_is_served_from_memory_without_decoding_again(
    open_cache: Callable[..., WarmCache], source_file: Callable[[str, int], Path]
) -> None:
    cache = open_cache()
    path = source_file("table.txt", 100)
    calls: list[Path] = []

    def decode(p: Path) -> str:
        calls.append(p)
        return p.read_text()

    first = cache.get_or_fetch(str(path), decode=decode)
    second = cache.get_or_fetch(str(path), decode=decode)
    assert first.tier is Tier.REMOTE and second.tier is Tier.MEMORY
    assert second.value == path.read_text() and len(calls) == 1


def test_an_inline_lambda_still_hits_memory(
    open_cache: Callable[..., WarmCache], source_file: Callable[[str, int], Path]
) -> None:
    cache = open_cache()
    url = source_file("a.txt", 10).as_uri()
    tiers = [cache.get_or_fetch(url, decode=lambda p: p.read_bytes()).tier for _ in range(3)]
    assert tiers == [Tier.REMOTE, Tier.MEMORY, Tier.MEMORY]


def test_decoders_with_state_are_told_apart() -> None:
    def make(n: int) -> Callable[[Path], Any]:
        return lambda p: n

    one, two = make(1), make(2)
    assert decoded_key("u", one) != decoded_key("u", two)

    def inline() -> Callable[[Path], Any]:
        return lambda p: p.name

    assert decoded_key("u", inline()) == decoded_key("u", inline())
    assert decoded_key("u", read_text) == decoded_key("u", read_text)
    assert decoded_key("u", read_text) != decoded_key("v", read_text)


def test_decoded_values_beyond_the_budget_leave_least_recently_used_first(
    open_cache: Callable[..., WarmCache], source_file: Callable[[str, int], Path]
) -> None:
    cache = open_cache(memory_budget_bytes=3 * MiB)
    urls = [str(source_file(f"f{i}", 10)) for i in range(4)]
    for url in urls[:3]:
        cache.get_or_fetch(url, decode=read_text, size_hint=MiB)
    cache.get_or_fetch(urls[0], decode=read_text, size_hint=MiB)
    cache.get_or_fetch(urls[3], decode=read_text, size_hint=MiB)
    tiers = [
        cache.get_or_fetch(urls[i], decode=read_text, size_hint=MiB).tier for i in (0, 2, 3, 1)
    ]
    assert tiers == [Tier.MEMORY, Tier.MEMORY, Tier.MEMORY, Tier.DISK]
    assert cache.stats()["memory"]["decoded_bytes"] <= 3 * MiB


def test_named_objects_take_room_from_decoded_values(
    open_cache: Callable[..., WarmCache], source_file: Callable[[str, int], Path]
) -> None:
    cache = open_cache(memory_budget_bytes=2 * MiB)
    cache.set_object("big", object(), size_bytes=2 * MiB)
    url = str(source_file("f", 10))
    cache.get_or_fetch(url, decode=read_text, size_hint=MiB)
    assert cache.get_or_fetch(url, decode=read_text, size_hint=MiB).tier is Tier.DISK
    assert cache.stats()["memory"]["rejected"] == 2


def test_sizes_are_measured_when_not_declared() -> None:
    assert measure_size_bytes(b"x" * MiB) >= MiB
    assert measure_size_bytes([b"x" * 1000] * 1) >= 1000
    many = {i: f"{i:0100d}" for i in range(100_000)}
    assert measure_size_bytes(many) > 100_000 * 100
    assert measure_size_bytes(memoryview(b"y" * 4096)) == 4096


def test_a_new_version_found_without_decode_retires_the_decoded_value(
    open_cache: Callable[..., WarmCache], source_file: Callable[[str, int], Path]
) -> None:
    cache = open_cache()
    src = source_file("v.txt", 10)
    assert cache.get_or_fetch(str(src), decode=read_text).value == src.read_text()
    src.write_text("second version")
    assert cache.get_or_fetch(str(src), revalidate=True).tier is Tier.REMOTE
    again = cache.get_or_fetch(str(src), decode=read_text)
    assert again.tier is Tier.DISK and again.value == "second version"

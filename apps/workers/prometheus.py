"""The dashboard's numbers in Prometheus' text format, per service and per worker.

A custom collector reads `service_dashboard_list()` at every scrape, so /metrics and the
dashboard always agree and nothing is kept between scrapes. Counters and the latency
histogram are the workers' own totals since they started (Prometheus' rate() handles
their restarts); the gauges are as of each worker's last heartbeat.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from apps.workers.stats import ServiceStats, WorkerStats, service_dashboard_list
from memrun.wire.stats import LATENCY_BOUNDS_MS

SERVICE = ["service"]
WORKER = ["service", "worker"]
TIER = ["service", "worker", "tier"]


class MemrunCollector(Collector):
    """Reads the numbers at collect time: three queries and one Kafka round trip."""

    def collect(self) -> Iterator[Metric]:
        services = service_dashboard_list()
        yield from _service_metrics(services)
        yield from _worker_metrics([w for s in services for w in s.workers])


def _service_metrics(services: list[ServiceStats]) -> Iterator[Metric]:
    gauges = {
        "workers_ready": ("workers reporting ready", lambda s: s.workers_ready),
        "workers_desired": ("workers the service should run", lambda s: s.workers_desired),
        "live_version": ("version of the active deployment", lambda s: s.live_version),
        "requests_per_minute": (
            "requests handled in the last minute",
            lambda s: s.requests.per_minute,
        ),
        "errors_per_minute": (
            "failed requests in the last minute",
            lambda s: s.requests.errors_per_minute,
        ),
        "latency_p50_seconds": (
            "median handler latency over the last minute",
            lambda s: None if s.requests.p50_ms is None else s.requests.p50_ms / 1000,
        ),
        "latency_p99_seconds": (
            "99th percentile handler latency over the last minute",
            lambda s: None if s.requests.p99_ms is None else s.requests.p99_ms / 1000,
        ),
        "lag": ("messages waiting on the request topic", lambda s: s.lag),
        "in_flight": ("requests being handled or queued in workers", lambda s: s.in_flight),
        "dead_letters": ("records kept on the service's DLQ topic", lambda s: s.dead_letters),
    }
    for name, (help_text, value_of) in gauges.items():
        family = GaugeMetricFamily(f"memrun_service_{name}", help_text, labels=SERVICE)
        for service in services:
            value = value_of(service)
            if value is not None:
                family.add_metric([service.name], float(value))
        yield family
    ratio = GaugeMetricFamily(
        "memrun_service_cache_hit_ratio",
        "share of cache look-ups served by each tier (memory, disk, remote: fetched)",
        labels=["service", "tier"],
    )
    for service in services:
        for tier in service.cache_tiers:
            if tier.hit_ratio is not None:
                ratio.add_metric([service.name, tier.tier], tier.hit_ratio)
    yield ratio


def _worker_metrics(workers: list[WorkerStats]) -> Iterator[Metric]:
    gauges = {
        "in_flight": ("requests being handled or queued", lambda w: w.in_flight),
        "concurrency": ("handlers the worker runs at once", lambda w: w.concurrency),
        "lag": ("messages waiting on the worker's partitions", lambda w: w.lag),
        "partitions": ("partitions the worker owns", lambda w: len(w.partitions)),
        "requests_per_minute": (
            "requests handled in the last minute",
            lambda w: w.requests.per_minute,
        ),
    }
    for name, (help_text, value_of) in gauges.items():
        family = GaugeMetricFamily(f"memrun_worker_{name}", help_text, labels=WORKER)
        for worker in workers:
            value = value_of(worker)
            if value is not None:
                family.add_metric([worker.service, worker.name], float(value))
        yield family
    heartbeat = GaugeMetricFamily(
        "memrun_worker_last_heartbeat_timestamp_seconds",
        "when the worker last reported (Unix time)",
        labels=WORKER,
    )
    partition_lag = GaugeMetricFamily(
        "memrun_worker_partition_lag",
        "messages waiting on each partition the worker owns",
        labels=["service", "worker", "partition"],
    )
    requests = CounterMetricFamily(
        "memrun_worker_requests", "requests handled since the worker started", labels=WORKER
    )
    errors = CounterMetricFamily(
        "memrun_worker_request_errors",
        "failed or timed-out requests since the worker started",
        labels=WORKER,
    )
    latency = HistogramMetricFamily(
        "memrun_worker_handler_latency_seconds",
        "handler latency since the worker started",
        labels=WORKER,
    )
    hits = CounterMetricFamily(
        "memrun_worker_cache_hits",
        "cache look-ups served by each tier (remote: fetched from S3 or the source)",
        labels=TIER,
    )
    used = GaugeMetricFamily(
        "memrun_worker_cache_used_bytes", "bytes held by each cache tier", labels=TIER
    )
    capacity = GaugeMetricFamily(
        "memrun_worker_cache_capacity_bytes", "capacity of each cache tier", labels=TIER
    )
    for worker in workers:
        labels = [worker.service, worker.name]
        if worker.last_heartbeat_at is not None:
            heartbeat.add_metric(labels, worker.last_heartbeat_at.timestamp())
        for partition, lag in sorted(worker.partition_lag.items()):
            partition_lag.add_metric([*labels, str(partition)], float(lag))
        requests.add_metric(labels, float(worker.requests.total))
        errors.add_metric(labels, float(worker.requests.errors))
        latency.add_metric(
            labels,
            _cumulative_buckets(worker.requests.latency_counts),
            sum_value=worker.requests.latency_sum_ms / 1000,
        )
        for tier in worker.cache_tiers:
            hits.add_metric([*labels, tier.tier], float(tier.hits))
            if tier.used_bytes is not None and tier.capacity_bytes is not None:
                used.add_metric([*labels, tier.tier], float(tier.used_bytes))
                capacity.add_metric([*labels, tier.tier], float(tier.capacity_bytes))
    yield from (heartbeat, partition_lag, requests, errors, latency, hits, used, capacity)


def _cumulative_buckets(counts: tuple[int, ...]) -> list[tuple[str, float]]:
    bounds = [f"{bound / 1000:g}" for bound in LATENCY_BOUNDS_MS] + ["+Inf"]
    buckets, seen = [], 0
    for bound, count in zip(bounds, counts, strict=True):
        seen += count
        buckets.append((bound, float(seen)))
    return buckets


# Built once; the collector holds no state, it reads the database at each scrape.
registry = CollectorRegistry(auto_describe=False)
registry.register(MemrunCollector())

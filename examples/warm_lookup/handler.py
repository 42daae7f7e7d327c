"""Warm lookup: load a dataset once per worker, then answer questions about it from RAM.

Requests for the same `user_id:dataset_id` reach the same worker, so the second question
about a dataset is answered from memory: no download, no parsing.

    memrun secret set s3-dev AWS_ENDPOINT_URL=http://127.0.0.1:19000 \
        AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...      # its S3 credentials
    memrun deploy examples/warm_lookup/handler.py --name warm-lookup
    memrun invoke warm-lookup '{"user_id": 1, "dataset_id": "sales",
                                "dataset_url": "s3://memrun/examples/sales.csv",
                                "column": "amount"}'
"""

import csv
import statistics
from pathlib import Path

from memrun import MemoryService

svc = MemoryService(
    name="warm-lookup",
    memory="1Gi",
    disk="10Gi",
    max_workers=4,
    concurrency=8,
    timeout_seconds=60,
    # Its workers read S3 with these credentials (AWS_*), and only these.
    secrets=["s3-dev"],
)


def load_table(path: Path) -> dict[str, list[float]]:
    """Parse a CSV with a header row into numeric columns (non-numbers are skipped)."""
    columns: dict[str, list[float]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            for name, text in row.items():
                try:
                    columns.setdefault(name, []).append(float(text))
                except (TypeError, ValueError):
                    continue
    return columns


@svc.init_handler()
def setup(ctx):
    ctx.set_object("questions_answered", 0)


@svc.handler(sticky_key="user_id:dataset_id")
async def handle(ctx, req):
    table = await ctx.get_or_fetch(req["dataset_url"], decode=load_table)
    column = req.get("column", "amount")
    if column not in table:
        raise KeyError(f"column {column!r} not in dataset; columns: {sorted(table)}")
    values = table[column]
    ctx.set_object("questions_answered", ctx.get_object("questions_answered") + 1)
    return {
        "dataset_id": req["dataset_id"],
        "column": column,
        "rows": len(values),
        "sum": sum(values),
        "mean": statistics.fmean(values),
        "max": max(values),
        "served_from": ctx.tiers[-1],
        "worker": ctx.worker_id,
    }

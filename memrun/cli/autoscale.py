"""`memrun autoscale NAME [--min N --max N --lag-per-worker L --max-queue-seconds S ...]
[--off]`: scale a service on its request lag and time in queue, and show what the
autoscaler decided and why."""

from __future__ import annotations

import argparse
from typing import Any

from memrun._client import Client

# flag -> the API's field
OPTIONS = {
    "min": "min_workers",
    "max": "max_workers",
    "lag_per_worker": "lag_per_worker",
    "max_queue_seconds": "max_queue_seconds",
    "up_window": "scale_up_window_s",
    "down_window": "scale_down_window_s",
    "up_cooldown": "scale_up_cooldown_s",
    "down_cooldown": "scale_down_cooldown_s",
}
DECISIONS_SHOWN = 10
OFF = "off"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "autoscale",
        help="scale a service on its request lag and time in queue (or --off); show decisions",
        description=(
            "Turn on autoscaling: a worker is added when the lag per worker stays above "
            "--lag-per-worker, or the oldest request not yet done has waited more than "
            "--max-queue-seconds (when set), for --up-window seconds; one is removed (it "
            "drains) when the workers stay idle for --down-window seconds, and no change "
            "follows another within its cooldown. Only the options given change; without "
            "any, shows the policy and the recent decisions. --min/--max lie within the "
            "deployment's min_workers/max_workers."
        ),
    )
    parser.add_argument("name", help="the service")
    parser.add_argument("--min", type=int, metavar="N", help="fewest workers")
    parser.add_argument("--max", type=int, metavar="N", help="most workers")
    parser.add_argument(
        "--lag-per-worker", type=int, metavar="L", help="add a worker above this lag per worker"
    )
    parser.add_argument(
        "--max-queue-seconds",
        type=_seconds_or_off,
        metavar="S",
        help="also add a worker when a request waits longer than S seconds ('off': lag only)",
    )
    parser.add_argument("--up-window", type=float, metavar="S", help="seconds of lag to add one")
    parser.add_argument("--down-window", type=float, metavar="S", help="seconds idle to remove one")
    parser.add_argument("--up-cooldown", type=float, metavar="S", help="seconds between changes")
    parser.add_argument(
        "--down-cooldown", type=float, metavar="S", help="seconds after a change before removing"
    )
    parser.add_argument("--off", action="store_true", help="turn autoscaling off")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {
        field: None if getattr(args, flag) == OFF else getattr(args, flag)
        for flag, field in OPTIONS.items()
        if getattr(args, flag) is not None
    }
    if args.off:
        changes["enabled"] = False
    elif changes:
        changes["enabled"] = True
    status = Client().autoscale(args.name, **changes)
    print(describe(status))
    for line in decision_lines(status["decisions"][:DECISIONS_SHOWN]):
        print(line)
    return 0


def describe(status: dict[str, Any]) -> str:
    """One line: the policy, or that it is off, and the desired worker count."""
    name, desired = status["service"], status["desired_workers"]
    if not status["enabled"]:
        return f"{name}: autoscaling off; {desired} worker(s) desired"
    waited = status.get("max_queue_seconds")
    queue = "" if waited is None else f" or {waited:g}s in queue"
    return (
        f"{name}: autoscaling {status['min_workers']}..{status['max_workers']} worker(s) on "
        f"lag per worker {status['lag_per_worker']}{queue} "
        f"(up after {status['scale_up_window_s']:g}s, "
        f"down after {status['scale_down_window_s']:g}s idle; cooldowns "
        f"{status['scale_up_cooldown_s']:g}s/{status['scale_down_cooldown_s']:g}s); "
        f"{desired} worker(s) desired"
    )


def decision_lines(decisions: list[dict[str, Any]]) -> list[str]:
    """The decisions, newest first, one line each: when, what, why."""
    return [
        f"  {d['decided_at'][:19].replace('T', ' ')}  {d['action']:<4}  "
        f"{d['workers_before']}->{d['workers_after']}  {d['reason']}: {d['message']}"
        for d in decisions
    ]


def _seconds_or_off(text: str) -> float | str:
    if text.strip().lower() == OFF:
        return OFF
    try:
        return float(text)  # the control plane says what range it takes
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds or 'off'") from None

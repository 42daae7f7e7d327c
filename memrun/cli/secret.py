"""`memrun secret set|list|delete`: the services' secrets (KEY=VALUE pairs their workers
get as env vars). Values go to the control plane and are never shown again: `list`
prints keys and a fingerprint that changes when any value does."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from memrun._client import Client
from memrun.errors import ConfigError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("secret", help="manage the secrets services use")
    actions = parser.add_subparsers(dest="secret_action", metavar="ACTION", required=True)
    put = actions.add_parser(
        "set",
        help="create a secret or replace all of its pairs",
        description=(
            "Create NAME, or replace all of its pairs. Services naming it (memrun deploy "
            "--secret NAME) roll out again when its values change. Pairs given as "
            "arguments land in your shell's history: prefer --from-env-file."
        ),
    )
    put.add_argument("name", metavar="NAME")
    put.add_argument("pairs", nargs="*", metavar="KEY=VALUE")
    put.add_argument(
        "--from-env-file",
        type=Path,
        metavar="FILE",
        help="read KEY=VALUE lines from FILE (# comments, blank lines and 'export ' skipped)",
    )
    put.set_defaults(handler=run_set)
    listing = actions.add_parser("list", help="the secrets: keys, fingerprint, users")
    listing.set_defaults(handler=run_list)
    delete = actions.add_parser("delete", help="delete a secret no service uses")
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(handler=run_delete)


def run_set(args: argparse.Namespace) -> int:
    values = read_env_file(args.from_env_file) if args.from_env_file else {}
    values.update(parse_pairs(args.pairs))
    if not values:
        raise ConfigError("give KEY=VALUE pairs or --from-env-file FILE")
    secret = Client().secret_set(args.name, values)
    print(
        f"secret {secret['name']} set: {', '.join(secret['keys'])} "
        f"(fingerprint {secret['fingerprint']})"
    )
    if secret["rolled"]:
        print(f"rolling out again with the new values: {', '.join(secret['rolled'])}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    secrets = Client().secrets()
    if not secrets:
        print("no secrets; create one with `memrun secret set NAME KEY=VALUE`")
        return 0
    rows = [
        (
            s["name"],
            ",".join(s["keys"]),
            s["fingerprint"],
            s["updated_at"][:19].replace("T", " "),
            ",".join(s["services"]) or "-",
        )
        for s in secrets
    ]
    header = ("NAME", "KEYS", "FINGERPRINT", "UPDATED", "SERVICES")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    return 0


def run_delete(args: argparse.Namespace) -> int:
    Client().secret_delete(args.name)
    print(f"secret {args.name} deleted")
    return 0


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """KEY=VALUE arguments; a malformed one is named by position, never echoed (it may be
    a value typed without its key)."""
    values: dict[str, str] = {}
    for position, pair in enumerate(pairs, start=1):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"pair {position} is not KEY=VALUE")
        values[key] = value
    return values


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv-style file; a value in matching quotes loses them."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}, line {number}: not KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values

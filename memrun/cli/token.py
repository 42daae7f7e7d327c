"""`memrun token create|list|revoke`: API tokens of the appliance, through its API.

A token holds roles (invoke, read, deploy, admin) on one service or on all, never more
than its user: `memrun token create --name app --service matrix-qa` makes an invoke-only
token for one application. The secret is printed once, as the last word.
"""

from __future__ import annotations

import argparse
from typing import Any

from memrun._client import Client
from memrun.errors import MemrunError

ROLES = ("invoke", "read", "deploy", "admin")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("token", help="manage API tokens of the appliance")
    actions = parser.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="create a token and print its secret once",
        description=(
            "Create a token holding ROLE on SERVICE (on all services without --service; "
            "the role defaults to invoke when only --service is given). Without either, "
            "the token holds all of its user's roles."
        ),
    )
    create.add_argument("--name", required=True, help="what the token is for, e.g. ci")
    create.add_argument("--service", help="the one service it may act on (default: all)")
    create.add_argument("--role", choices=ROLES, help="what it may do there")
    create.add_argument("--user", help="its owner (admins only; default: you)")
    create.set_defaults(handler=create_token)
    listing = actions.add_parser("list", help="list your active tokens and their roles")
    listing.add_argument("--all", action="store_true", help="every user's (admins only)")
    listing.set_defaults(handler=list_tokens)
    revoke = actions.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("token", help="its name or id (see `memrun token list`)")
    revoke.set_defaults(handler=revoke_token)


def create_token(args: argparse.Namespace) -> int:
    with Client() as client:
        token = client.token_create(args.name, service=args.service, role=args.role, user=args.user)
    print(
        f"API token {token['name']!r} of {token['user']} ({grants_text(token['grants'])}), "
        f"shown only now: {token['secret']}"
    )
    return 0


def list_tokens(args: argparse.Namespace) -> int:
    with Client() as client:
        tokens = client.tokens(all_users=args.all)
    print(f"{'id':>5}  {'name':<20} {'user':<12} {'prefix':<10} {'last used':<20} grants")
    for token in tokens:
        used = (token["last_used_at"] or "never")[:19]
        print(
            f"{token['id']:>5}  {token['name']:<20} {token['user']:<12} "
            f"{token['prefix']:<10} {used:<20} {grants_text(token['grants'])}"
        )
    return 0


def revoke_token(args: argparse.Namespace) -> int:
    with Client() as client:
        mine = client.tokens()
        found = [t for t in mine if args.token in (str(t["id"]), t["name"])]
        if not found:
            raise MemrunError(
                f"you have no active token named or numbered {args.token!r}; "
                "see `memrun token list`"
            )
        client.token_revoke(found[0]["id"])
    print(f"revoked token {found[0]['name']!r} (id {found[0]['id']})")
    return 0


def grants_text(grants: list[dict[str, Any]]) -> str:
    return ", ".join(f"{g['role']} on {g['service'] or 'all services'}" for g in grants)

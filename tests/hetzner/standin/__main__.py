"""`python -m tests.hetzner.standin [--host H] [--port N] [--token T]`: the stand-in alone."""

from __future__ import annotations

import argparse
import threading

from tests.hetzner.standin import DEFAULT_TOKEN, StandIn


def main() -> None:
    parser = argparse.ArgumentParser(description="a local stand-in of the Hetzner Cloud API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    args = parser.parse_args()
    standin = StandIn(token=args.token).serve(args.host, args.port)
    print(f"Hetzner stand-in at {standin.url} (token {args.token})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        standin.close()


if __name__ == "__main__":
    main()

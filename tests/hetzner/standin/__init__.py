"""A local stand-in of the Hetzner Cloud API (https://docs.hetzner.cloud), for tests.

A real threaded HTTP server on a free port that memrun reaches through the real `hcloud`
library (`HCLOUD_API_ENDPOINT`). It implements what memrun uses, with the documented
shapes: servers (create, get, list with `name`/`label_selector` and pagination meta,
delete), actions whose progress advances as they are polled and as time passes, server
types with per-location prices, images, locations, placement groups, firewalls, networks
and SSH keys; error bodies `{"error": {"code", "message", "details"}}`; the rate-limit
headers on every answer.

Faults on demand, through `StandIn.fault(...)` or `POST /_standin/faults`: 429 with
RateLimit-* headers, 502/504, a create that times out after making the server, an action
that fails; `StandIn.vanish(...)` deletes a server behind memrun's back. `calls` counts
requests per endpoint for API-call budgets; `on_server_created(server_id, name,
user_data)` is called for every server made (the bootstrap tests "boot" it from there).

Run alone: `python -m tests.hetzner.standin [--port N] [--token T]`.
"""

from tests.hetzner.standin.catalog import DEFAULT_TOKEN, FAULT_KINDS, SERVER_TYPES
from tests.hetzner.standin.server import StandIn, standin_running

__all__ = ["DEFAULT_TOKEN", "FAULT_KINDS", "SERVER_TYPES", "StandIn", "standin_running"]

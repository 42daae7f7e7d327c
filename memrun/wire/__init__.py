"""The wire format memrun's three parts share: the SDK, the control plane and the workers.

- `config`: `ServiceConfig`, a service's settings, and the name rule;
- `protocol`: topic, group and Redis key names, request headers, the `Outcome` record;
- `sticky`: `StickyTemplate`, the payload fields that pick a partition;
- `manifest`: `Manifest`, what a package declares (`manifest.json`);
- `archive`: reading and safely extracting a package (`inspect_package`, `extract_package`);
- `sizes`: "32Gi" <-> bytes;
- `install_env`: the machine settings (trust store, index, proxy) that reach a worker's
  PEP 723 install, and `redact_urls` for the passwords an index URL may carry;
- `stats`: the handler latency buckets a worker's heartbeat counts into.

Everything here is public and stable between a control plane and its workers; a change
that breaks either side bumps `manifest.FORMAT_VERSION`.
"""

from memrun.wire import protocol, stats
from memrun.wire.archive import (
    DEFAULT_LIMITS,
    PackageLimits,
    extract_package,
    inspect_package,
    open_tar,
    read_manifest,
)
from memrun.wire.config import ServiceConfig, service_config_build, validate_service_name
from memrun.wire.install_env import INSTALL_ENV_NAMES, install_env_pick, redact_urls
from memrun.wire.manifest import MANIFEST_NAME, Manifest, is_requirement, member_name_problem
from memrun.wire.protocol import Outcome
from memrun.wire.sizes import format_size, parse_size
from memrun.wire.sticky import StickyTemplate

__all__ = [
    "DEFAULT_LIMITS",
    "INSTALL_ENV_NAMES",
    "MANIFEST_NAME",
    "Manifest",
    "Outcome",
    "PackageLimits",
    "ServiceConfig",
    "StickyTemplate",
    "extract_package",
    "format_size",
    "inspect_package",
    "install_env_pick",
    "is_requirement",
    "member_name_problem",
    "open_tar",
    "parse_size",
    "protocol",
    "read_manifest",
    "redact_urls",
    "service_config_build",
    "stats",
    "validate_service_name",
]

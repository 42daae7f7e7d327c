"""What the Hetzner stand-in serves as fixed catalogue: locations, server types with
Hetzner's published prices, images, and the API's documented limits."""

from __future__ import annotations

from typing import Any

DEFAULT_TOKEN = "standin-token"
RATE_LIMIT = 3600  # requests per hour per project, as Hetzner documents
MAX_PER_PAGE = 50
USER_DATA_MAX_BYTES = 32 * 1024

LOCATIONS = [
    {
        "id": 1,
        "name": "fsn1",
        "description": "Falkenstein DC Park 1",
        "country": "DE",
        "city": "Falkenstein",
        "latitude": 50.47612,
        "longitude": 12.370071,
        "network_zone": "eu-central",
    },
    {
        "id": 2,
        "name": "nbg1",
        "description": "Nuremberg DC Park 1",
        "country": "DE",
        "city": "Nuremberg",
        "latitude": 49.452102,
        "longitude": 11.076665,
        "network_zone": "eu-central",
    },
    {
        "id": 3,
        "name": "hel1",
        "description": "Helsinki DC Park 1",
        "country": "FI",
        "city": "Helsinki",
        "latitude": 60.169855,
        "longitude": 24.938379,
        "network_zone": "eu-central",
    },
]

# name: (cores, memory GB, disk GB, cpu_type, EUR/month net, EUR/hour net), Hetzner's
# published list (Germany/Finland, excl. VAT) for these types, the same in the three EU
# locations the stand-in serves.
SERVER_TYPES: dict[str, tuple[int, float, int, str, str, str]] = {
    "cx22": (2, 4, 40, "shared", "3.7900", "0.0060"),
    "cx32": (4, 8, 80, "shared", "6.8000", "0.0109"),
    "cx42": (8, 16, 160, "shared", "16.4000", "0.0263"),
    "cx52": (16, 32, 320, "shared", "32.4000", "0.0519"),
    "cpx11": (2, 2, 40, "shared", "4.3500", "0.0070"),
    "cpx21": (3, 4, 80, "shared", "7.5500", "0.0121"),
    "cpx31": (4, 8, 160, "shared", "13.6000", "0.0218"),
    "cpx41": (8, 16, 240, "shared", "25.2000", "0.0403"),
    "cpx51": (16, 32, 360, "shared", "54.9000", "0.0880"),
    "ccx13": (2, 8, 80, "dedicated", "12.4900", "0.0200"),
    "ccx23": (4, 16, 160, "dedicated", "24.4900", "0.0392"),
    "ccx33": (8, 32, 240, "dedicated", "48.4900", "0.0777"),
    "ccx43": (16, 64, 360, "dedicated", "96.4900", "0.1546"),
    "ccx53": (32, 128, 600, "dedicated", "192.4900", "0.3085"),
    "ccx63": (48, 192, 960, "dedicated", "288.4900", "0.4623"),
}

IMAGES = [
    {"id": 114690387, "name": "debian-12", "description": "Debian 12", "os_flavor": "debian"},
    {"id": 161547269, "name": "ubuntu-24.04", "description": "Ubuntu 24.04", "os_flavor": "ubuntu"},
]

FAULT_KINDS = ("rate_limit", "bad_gateway", "gateway_timeout", "create_timeout", "action_error")


def gross(net: str) -> str:
    return f"{float(net) * 1.19:.4f}"


def server_type_json(type_id: int, name: str) -> dict[str, Any]:
    cores, memory, disk, cpu_type, monthly, hourly = SERVER_TYPES[name]
    return {
        "id": type_id,
        "name": name,
        "description": name.upper(),
        "category": "dedicated" if cpu_type == "dedicated" else "shared",
        "cores": cores,
        "memory": memory,
        "disk": disk,
        "storage_type": "local",
        "cpu_type": cpu_type,
        "architecture": "x86",
        "deprecated": False,
        "deprecation": None,
        "included_traffic": 21990232555520,
        "prices": [
            {
                "location": loc["name"],
                "price_hourly": {"net": hourly, "gross": gross(hourly)},
                "price_monthly": {"net": monthly, "gross": gross(monthly)},
                "included_traffic": 21990232555520,
                "price_per_tb_traffic": {"net": "1.0000", "gross": "1.1900"},
            }
            for loc in LOCATIONS
        ],
        "locations": [
            {
                "id": loc["id"],
                "name": loc["name"],
                "deprecation": None,
                "available": True,
                "recommended": True,
            }
            for loc in LOCATIONS
        ],
    }

"""Root test configuration: each area's fixtures live in tests/fixtures/ and load here."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.django",
    "tests.fixtures.appliance",
    "tests.fixtures.hetzner",
    "tests.fixtures.bootstrap",
]

"""The install allowlist: which of the appliance's variables reach a worker's installer,
and the redaction of passwords in index and proxy URLs."""

from __future__ import annotations

from memrun.wire import INSTALL_ENV_NAMES, install_env_pick, redact_urls


def test_only_the_allowlisted_machine_settings_are_picked() -> None:
    environ = {
        "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
        "UV_INDEX_URL": "https://mirror.example/simple",
        "PIP_EXTRA_INDEX_URL": "https://extra.example/simple",
        "HTTPS_PROXY": "http://proxy.example:3128",
        "no_proxy": "127.0.0.1,localhost",
        "UV_NATIVE_TLS": "1",
        "SSL_CERT_DIR": "   ",  # blank: not a setting
        "DATABASE_URL": "postgres://memrun:secret@db/memrun",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_ACCESS_KEY_ID": "key",
        "MEMRUN_WORKER_TOKEN": "mrw_secret",
        "HCLOUD_TOKEN": "secret",
        "SECRET_KEY": "secret",
    }
    assert install_env_pick(environ) == {
        "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
        "UV_INDEX_URL": "https://mirror.example/simple",
        "PIP_EXTRA_INDEX_URL": "https://extra.example/simple",
        "HTTPS_PROXY": "http://proxy.example:3128",
        "no_proxy": "127.0.0.1,localhost",
        "UV_NATIVE_TLS": "1",
    }


def test_the_allowlist_is_trust_store_index_and_proxy_names_only() -> None:
    assert len(set(INSTALL_ENV_NAMES)) == len(INSTALL_ENV_NAMES)
    for name in INSTALL_ENV_NAMES:
        assert name.upper().startswith(("SSL_", "REQUESTS_", "PIP_", "UV_")) or name.upper() in (
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
        ), name
        assert not any(word in name for word in ("TOKEN", "PASSWORD", "SECRET", "KEY")), name


def test_passwords_in_urls_are_redacted() -> None:
    text = (
        "Failed to fetch https://alice:s3cret@mirror.example/simple/humanize/ "
        "via http://bob:pw@proxy:3128, token https://glpat-xyz@gitlab.example/simple, "
        "plain https://pypi.org/simple and user@example.com stay"
    )
    assert redact_urls(text) == (
        "Failed to fetch https://***@mirror.example/simple/humanize/ "
        "via http://***@proxy:3128, token https://***@gitlab.example/simple, "
        "plain https://pypi.org/simple and user@example.com stay"
    )

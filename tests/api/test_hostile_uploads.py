"""Hostile uploads through the HTTP endpoint (I7): every one a 4xx that names the problem,
with nothing stored (artifact store and database unchanged) and no temporary file left."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from apps.services.models import Deployment, Service
from tests.api.test_deployments_api import build, handler_source
from tests.memrun.archives import HANDLER, GiB, cases, gzip_members, header, package, zeros_gzip

pytestmark = pytest.mark.django_db

DEMO = "demo-svc"  # the service the corpus's manifests name


@pytest.fixture
def home(settings: Any, tmp_path: Path) -> Callable[[], set[str]]:
    """MEMRUN_HOME and a folder artifact store in tmp_path; `files()` lists every file in
    either, so a test can see that a refusal left nothing behind."""
    settings.MEMRUN_HOME = tmp_path / "home"
    settings.MEMRUN_ARTIFACTS_URL = (tmp_path / "artifacts").as_uri()
    return lambda: {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}


def send(client: Client, transport: str, data: bytes, *, name: str = DEMO, **extra: Any) -> Any:
    url = f"/api/v1/services/{name}/deployments"
    if transport == "form":
        return client.post(url, {"package": SimpleUploadedFile("p.tar.gz", data)}, **extra)
    # A real client always says what the body is and how long, even when it is empty
    # (Django's test client leaves both out then).
    extra.setdefault("CONTENT_LENGTH", str(len(data)))
    extra.setdefault("CONTENT_TYPE", "application/gzip")
    return client.post(url, data, content_type="application/gzip", **extra)


def assert_refused(
    response: Any, status: int, reason: str | None, phrase: str, files: set[str]
) -> None:
    body = response.json()
    assert response.status_code == status, body
    assert set(body) == {"message", "details"}
    assert phrase in body["message"], body["message"]
    if reason is not None:
        assert body["details"]["reason"] == reason, body
    assert files == set(), files
    assert not Deployment.objects.exists()
    assert not Service.objects.exists()


def bomb_declared() -> bytes:
    """A 10 GiB member announced in its header, followed by ~10 MB of gzipped zeros."""
    return gzip_members([header("big.bin", 10 * GiB)]) + zeros_gzip(GiB)


def bomb_zeros() -> bytes:
    """2 GiB of zeros in ~2 MB: no tar structure, just inflation."""
    return zeros_gzip(2 * GiB)


CORPUS = [
    *[(case_id, build, reason, phrase) for case_id, build, reason, phrase in cases()],
    ("bomb-declared", bomb_declared, "file_too_large", "10737418240"),
    ("bomb-zeros", bomb_zeros, "inflated_too_large", "inflates past"),
    (
        "entry-does-not-compile",
        lambda: package(files={"handler.py": b"def broken(:\n"}),
        "entry_invalid",
        "does not compile: line 1",
    ),
    (
        "entry-null-bytes",
        lambda: package(files={"handler.py": HANDLER + b"\0"}),
        "entry_invalid",
        "does not compile",
    ),
]


@pytest.mark.parametrize("transport", ["raw", "form"])
@pytest.mark.parametrize(
    ("build_archive", "reason", "phrase"),
    [pytest.param(build, reason, phrase, id=case_id) for case_id, build, reason, phrase in CORPUS],
)
def test_hostile_package_is_refused_and_stores_nothing(
    api_client: Client,
    home: Callable[[], set[str]],
    transport: str,
    build_archive: Callable[[], bytes],
    reason: str,
    phrase: str,
) -> None:
    response = send(api_client, transport, build_archive())
    assert_refused(response, 422, reason, phrase, home())


def test_the_corpus_package_itself_is_accepted(
    api_client: Client, home: Callable[[], set[str]], kafka_admin: Any
) -> None:
    """The control case: the corpus only fails for what each case adds."""
    from tests.fixtures.django import delete_service_topics

    try:
        response = send(api_client, "raw", package())
        assert response.status_code == 201, response.json()
    finally:
        delete_service_topics(kafka_admin, [DEMO])
    assert {path.split("/")[0] for path in home()} == {"artifacts"}


@pytest.mark.parametrize("transport", ["raw", "form"])
def test_a_body_over_the_cap_is_413_before_it_is_read(
    api_client: Client, home: Callable[[], set[str]], settings: Any, transport: str
) -> None:
    settings.MEMRUN_PACKAGE_MAX_BYTES = 4096
    response = send(api_client, transport, bytes(200_000))
    assert_refused(response, 413, "archive_too_large", "larger than the limit of 4096", home())


def test_a_multipart_file_over_the_cap_is_cut_off_while_streaming(
    api_client: Client, home: Callable[[], set[str]], settings: Any
) -> None:
    """Within the up-front allowance for multipart framing, the stream itself is capped."""
    settings.MEMRUN_PACKAGE_MAX_BYTES = 4096
    response = send(api_client, "form", bytes(20_000))
    assert_refused(response, 413, "archive_too_large", "larger than the limit of 4096", home())


def test_a_package_for_another_service_is_refused(
    api_client: Client, home: Callable[[], set[str]], service_name: Callable[[], str]
) -> None:
    response = send(api_client, "raw", package(), name=service_name())
    assert_refused(response, 422, "service_mismatch", "is for service 'demo-svc'", home())


@pytest.mark.parametrize(
    ("filename", "source", "reason", "phrase"),
    [
        ("handler.py", b"def broken(:\n", "handler_invalid", "syntax error"),
        ("handler.py", b"x = 1\n", "handler_invalid", "no MemoryService"),
        ("handler.py", b"\xff\xfe not utf-8", "entry_invalid", "not UTF-8"),
        ("handler.py", handler_source("other-svc").encode(), "service_mismatch", "other-svc"),
        ("handler.py", b"x = 1\n" * 1_000_000, "entry_too_large", "handler module"),
    ],
    ids=["syntax", "no-service", "not-utf8", "other-service", "huge"],
)
def test_a_bad_handler_file_is_refused(
    api_client: Client,
    home: Callable[[], set[str]],
    filename: str,
    source: bytes,
    reason: str,
    phrase: str,
) -> None:
    response = api_client.post(
        f"/api/v1/services/{DEMO}/deployments", {"package": SimpleUploadedFile(filename, source)}
    )
    assert_refused(response, 422, reason, phrase, home())


def test_config_the_service_cannot_take_is_refused_before_storing(
    api_client: Client,
    home: Callable[[], set[str]],
    service_factory: Callable[..., Service],
    tmp_path: Path,
) -> None:
    service = service_factory(partitions=1)
    package_bytes = build(tmp_path, service.name)  # max_workers=2
    response = send(api_client, "raw", package_bytes, name=service.name)
    body = response.json()
    assert response.status_code == 422, body
    assert "cannot exceed the 1 partitions" in body["message"]
    assert list(body["details"]["fields"]) == ["max_workers"]
    assert not {path for path in home() if not path.startswith("src-")}
    assert not Deployment.objects.exists()
    assert service.config is None


@pytest.mark.parametrize(
    ("request_kwargs", "status", "phrase"),
    [
        ({"data": b"{}", "content_type": "application/json"}, 415, "cannot deploy a application"),
        ({"data": {"message": "no file"}}, 400, "file field 'package'"),
        (
            {
                "data": {
                    "package": SimpleUploadedFile("a.py", b""),
                    "other": SimpleUploadedFile("b", b""),
                }
            },
            400,
            "unexpected file field 'other'",
        ),
        (
            {"data": gzip.compress(b"x"), "content_type": "application/gzip", "CONTENT_LENGTH": ""},
            411,
            "Content-Length",
        ),
        (
            {
                "data": package(),
                "content_type": "application/gzip",
                "QUERY_STRING": "message=" + "m" * 3000,
            },
            422,
            "message",
        ),
    ],
    ids=["json", "no-file", "two-files", "no-length", "long-message"],
)
def test_a_malformed_request_is_a_4xx_naming_it(
    api_client: Client,
    home: Callable[[], set[str]],
    request_kwargs: dict[str, Any],
    status: int,
    phrase: str,
) -> None:
    response = api_client.post(f"/api/v1/services/{DEMO}/deployments", **request_kwargs)
    assert_refused(response, status, None, phrase, home())


def test_an_invalid_service_name_is_refused_before_the_body_is_read(
    api_client: Client, home: Callable[[], set[str]]
) -> None:
    response = send(api_client, "raw", package(), name="Not_A_Name")
    assert_refused(response, 422, None, "service name 'Not_A_Name' is not valid", home())

"""The real services answer the way the rest of the code relies on.

Kafka: a key produced with `partitioner=murmur2_random` lands on the partition Java's
client would choose (I1 depends on every client agreeing). S3: the calls the cache and the
artifact store make. Redis and PostgreSQL: reachable with the settings `scripts/services env`
prints.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg
import pytest
import redis
from botocore.exceptions import ClientError
from confluent_kafka import Consumer, Producer

from tests.fixtures.services import S3Settings, kafka_test_config, make_s3_client, require_env

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1024 * 1024


def java_murmur2(data: bytes) -> int:
    """Kafka's `Utils.murmur2`, as an unsigned 32-bit value."""
    m = 0x5BD1E995
    h = (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    whole = len(data) & ~3
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = data[whole:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if len(tail) >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def java_partition(key: bytes, partitions: int) -> int:
    """The Java producer's default partition for a keyed record: toPositive(murmur2) % n."""
    return (java_murmur2(key) & 0x7FFFFFFF) % partitions


def signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


@pytest.mark.parametrize(
    ("key", "java_value"),
    # Values printed by org.apache.kafka.common.utils.Utils.murmur2 (kafka-clients 4.4.0).
    [
        (b"", 275646681),
        (b"K", 1712047042),
        (b"21", -973932308),
        (b"abc", 479470107),
        (b"foobar", -790332482),
        (b"42:sales", -2087060012),
        (b"a-little-bit-long-string", -985981536),
        ("été".encode(), -2101193575),
    ],
)
def test_murmur2_matches_java(key: bytes, java_value: int) -> None:
    assert signed32(java_murmur2(key)) == java_value


def test_kafka_key_lands_on_java_partition(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str], unique_name: str
) -> None:
    partitions = 8
    topic = kafka_topic_factory(partitions, prefix="smoke")
    keys = [b"K", b"42:sales", b"user-7", "été".encode(), f"k-{unique_name}".encode()]
    keys += [f"key-{i}".encode() for i in range(20)]
    assert len({java_partition(k, partitions) for k in keys}) > 1, "keys must spread"

    producer = Producer(kafka_test_config(kafka_bootstrap, {"partitioner": "murmur2_random"}))
    for key in keys:
        producer.produce(topic, key=key, value=b"v:" + key)
    assert producer.flush(30) == 0

    consumer = Consumer(
        kafka_test_config(
            kafka_bootstrap,
            {
                "group.id": f"smoke-{unique_name}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    landed: dict[bytes, int] = {}
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(landed) < len(keys) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            key = msg.key()
            assert key is not None
            assert msg.value() == b"v:" + key
            landed[key] = msg.partition()
    finally:
        consumer.close()

    assert landed == {k: java_partition(k, partitions) for k in keys}


def test_s3_put_get_range_head(
    s3_client: S3Client, s3_settings: S3Settings, unique_name: str
) -> None:
    bucket, key = s3_settings.bucket, f"smoke/{unique_name}/hello.txt"
    body = b"hello, warm memory"
    put = s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    try:
        assert put["ETag"].strip('"')
        got = s3_client.get_object(Bucket=bucket, Key=key)
        assert got["Body"].read() == body
        assert got["ETag"] == put["ETag"]

        ranged = s3_client.get_object(Bucket=bucket, Key=key, Range="bytes=7-10")
        assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert ranged["Body"].read() == body[7:11]
        assert ranged["ContentRange"] == f"bytes 7-10/{len(body)}"

        with pytest.raises(ClientError) as missing:
            s3_client.head_object(Bucket=bucket, Key=f"smoke/{unique_name}/missing")
        assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    finally:
        s3_client.delete_object(Bucket=bucket, Key=key)


def test_s3_multipart_with_8mib_parts(
    s3_client: S3Client, s3_settings: S3Settings, unique_name: str
) -> None:
    bucket, key = s3_settings.bucket, f"smoke/{unique_name}/big.bin"
    part_size = 8 * MiB
    data = os.urandom(part_size + MiB + 123)
    upload = s3_client.create_multipart_upload(Bucket=bucket, Key=key)
    try:
        parts = []
        for number, start in enumerate(range(0, len(data), part_size), start=1):
            part = s3_client.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload["UploadId"],
                PartNumber=number,
                Body=data[start : start + part_size],
            )
            parts.append({"ETag": part["ETag"], "PartNumber": number})
        done = s3_client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
        )
        assert done["ETag"]

        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == len(data)
        assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
        across = s3_client.get_object(
            Bucket=bucket, Key=key, Range=f"bytes={part_size - 4}-{part_size + 3}"
        )
        assert across["Body"].read() == data[part_size - 4 : part_size + 4]
    finally:
        s3_client.delete_object(Bucket=bucket, Key=key)


def test_s3_refuses_wrong_credentials(s3_settings: S3Settings) -> None:
    wrong = make_s3_client(s3_settings, aws_secret_access_key="not-the-secret")
    with pytest.raises(ClientError) as refused:
        wrong.list_objects_v2(Bucket=s3_settings.bucket)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_redis_round_trip(redis_client: redis.Redis, unique_name: str) -> None:
    key = f"smoke:{unique_name}"
    redis_client.set(key, b"value", ex=60)
    assert redis_client.get(key) == b"value"
    assert redis_client.delete(key) == 1


def test_postgres_role_may_create_databases() -> None:
    with psycopg.connect(require_env("DATABASE_URL"), connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT current_user, rolcreatedb FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert row == ("memrun", True)

"""A waiting invoke does not wait for Kafka's delivery report (apps/services/broker.py,
Delivery): the report comes on the producer's poll thread, and only a refusal reaches
the waiting caller's loop at once; a caller that stops waiting first confirms the
report. Reports are delivered here from a thread of their own, as the poll thread does."""

from __future__ import annotations

import asyncio
import threading

import pytest
from confluent_kafka import KafkaError

from apps.services import broker


def report_from_another_thread(delivery: broker.Delivery, error: KafkaError | None) -> None:
    thread = threading.Thread(target=delivery, args=(error, None))
    thread.start()
    thread.join()


def test_a_refused_message_fails_its_callers_wait_at_once() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[bytes] = loop.create_future()
        delivery = broker.Delivery(loop, outcome)
        report_from_another_thread(delivery, KafkaError(KafkaError._MSG_TIMED_OUT))
        with pytest.raises(broker.BrokerDown, match="Message timed out"):
            await asyncio.wait_for(outcome, 10)
        with pytest.raises(broker.BrokerDown, match="Message timed out"):
            await delivery.confirmed()

    asyncio.run(scenario())


def test_a_delivered_message_leaves_its_callers_wait_alone() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[bytes] = loop.create_future()
        delivery = broker.Delivery(loop, outcome)
        report_from_another_thread(delivery, None)
        await delivery.confirmed()
        await asyncio.sleep(0)  # a wake-up, had one been sent, would have run by now
        assert not outcome.done()

    asyncio.run(scenario())


def test_confirming_waits_for_a_report_still_to_come() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        delivery = broker.Delivery(loop, loop.create_future())
        confirming = loop.create_task(delivery.confirmed())
        await asyncio.sleep(0)
        assert not confirming.done()
        thread = threading.Thread(target=delivery, args=(None, None))
        thread.start()
        await asyncio.wait_for(confirming, 10)
        thread.join()

    asyncio.run(scenario())

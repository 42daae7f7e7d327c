"""The outcome subscription: one per web process, waking the callers that wait.

Every worker publishes each first outcome on its service's done channel
(`memrun:{service}:done`, `{request_id} {outcome json}`); this process subscribes to all of
them (and to the cache invalidations) on one connection read by one thread. A waiting
caller is a future in a dict, not a blocked connection.

At a thousand outcomes a second this thread is a large part of an invoke's cost, so it
reads the subscription as raw RESP with hiredis (one `recv` and one C parse for every
message that came in together, instead of redis-py's PubSub machinery per message) and
hands each event loop its whole share of a read in one `call_soon_threadsafe`, not one
per outcome. The connection is its own: AUTH as the URL says (TLS for rediss://), then
PSUBSCRIBE/SUBSCRIBE; a silent connection is probed with PING and replaced when dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import hiredis
import redis
from django.conf import settings
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from memrun.wire import protocol

logger = logging.getLogger(__name__)

INVALIDATE_CHANNEL = "memrun:invalidate"
_RECONNECT_MAX_S = 2.0
_SUBSCRIBE_TIMEOUT_S = 5.0
_CONNECT_TIMEOUT_S = 5.0
# A connection silent this long is probed with PING; silent twice as long, replaced.
_IDLE_PROBE_S = 15.0
_READ_BYTES = 1 << 16

Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[bytes]"]


class OutcomeListener:
    """Wakes waiting callers when their outcome is published. Thread-safe.

    `on_done(service, request_id)` sees every outcome of every service (admission counts
    backlogs with it); `on_invalidate(message)` every invalidation.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, list[Waiter]] = {}  # by outcome key: service and id
        self._started = False
        self._subscribed = threading.Event()
        self.on_done: list[Callable[[str, str], None]] = []
        self.on_invalidate: list[Callable[[bytes], None]] = []

    def start(self, *, wait: bool = True) -> None:
        """Start the subscription (once per process); the first call waits until it is
        live. Later losses are healed by the thread: on resubscribing it looks up the
        outcomes of everyone registered, so nothing published meanwhile is missed."""
        with self._lock:
            if self._started:
                return
            self._started = True
            threading.Thread(target=self._serve, name="memrun-outcomes", daemon=True).start()
        if wait and not self._subscribed.wait(_SUBSCRIBE_TIMEOUT_S):
            raise redis.ConnectionError(f"could not subscribe to {settings.REDIS_URL}")

    def register(self, service: str, request_id: str) -> asyncio.Future[bytes]:
        """A future that gets the outcome json of `service`'s request `request_id`;
        `unregister` it when done."""
        self.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        key = protocol.outcome_key(service, request_id)
        with self._lock:
            waiters = self._waiters.get(key)
            if waiters is None:
                self._waiters[key] = [(loop, future)]
            else:
                waiters.append((loop, future))
        return future

    def unregister(self, service: str, request_id: str, future: asyncio.Future[bytes]) -> None:
        key = protocol.outcome_key(service, request_id)
        with self._lock:
            waiters = self._waiters.get(key)
            if waiters is None:
                return
            remaining = [w for w in waiters if w[1] is not future]
            if remaining:
                self._waiters[key] = remaining
            else:
                del self._waiters[key]

    def waiting(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._waiters.values())

    def _serve(self) -> None:
        delay_s = 0.05
        while True:
            try:
                with contextlib.closing(_subscribe()) as sock:
                    delay_s = 0.05
                    self._read(sock)
            except (OSError, redis.RedisError) as exc:
                logger.warning("outcome subscription lost (%s); reconnecting", exc)
            except Exception:  # a bad message or callback must not end this process's wake-ups
                logger.exception("outcome subscription failed; reconnecting")
            self._subscribed.clear()
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, _RECONNECT_MAX_S)

    def _read(self, sock: socket.socket) -> None:
        reader = hiredis.Reader()
        sock.settimeout(_IDLE_PROBE_S)
        probed = False
        while True:
            try:
                data = sock.recv(_READ_BYTES)
            except TimeoutError:
                if probed:
                    raise redis.ConnectionError("the subscription stopped answering") from None
                sock.sendall(_command(b"PING"))
                probed = True
                continue
            if not data:
                raise redis.ConnectionError("Redis closed the subscription")
            probed = False
            reader.feed(data)
            self._handle_all(reader)

    def _handle_all(self, reader: hiredis.Reader) -> None:
        done: list[tuple[str, str, bytes]] = []
        while (reply := reader.gets()) is not False:
            if isinstance(reply, hiredis.ReplyError):
                raise redis.ResponseError(str(reply))
            kind = reply[0]
            if kind == b"pmessage":
                service = protocol.done_channel_service(reply[2].decode())
                raw_id, _, outcome = reply[3].partition(b" ")
                done.append((service, raw_id.decode(errors="replace"), outcome))
            elif kind == b"message":
                for invalidate in self.on_invalidate:
                    invalidate(reply[2])
            elif kind == b"psubscribe" and not self._subscribed.is_set():
                # A (re)subscription: what was published while we were away is only in
                # the outcome keys, so look those up for everyone still waiting.
                self._recheck()
                self._subscribed.set()
        if done:
            self._wake([(protocol.outcome_key(s, r), outcome) for s, r, outcome in done])
            for service, request_id, _ in done:
                for on_done in self.on_done:
                    on_done(service, request_id)

    def _recheck(self) -> None:
        with self._lock:
            keys = list(self._waiters)
        if not keys:
            return
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=_CONNECT_TIMEOUT_S)
        try:
            found = client.mget(keys)
        finally:
            client.close()
        self._wake([(k, o) for k, o in zip(keys, found, strict=True) if o is not None])

    def _wake(self, outcomes: list[tuple[str, bytes]]) -> None:
        """Settle the callers waiting on each (outcome key, outcome): one hop per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bytes], bytes]]] = {}
        with self._lock:
            for key, outcome in outcomes:
                for loop, future in self._waiters.pop(key, ()):
                    by_loop.setdefault(loop, []).append((future, outcome))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that caller's loop is closed
                loop.call_soon_threadsafe(_settle_all, settled)


def _settle_all(settled: list[tuple[asyncio.Future[bytes], bytes]]) -> None:
    for future, outcome in settled:
        if not future.done():
            future.set_result(outcome)


def _command(*args: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def _subscribe() -> socket.socket:
    """A connection to settings.REDIS_URL, authenticated and subscribed."""
    url = parse_url(settings.REDIS_URL)
    kind = url.get("connection_class")
    sock: socket.socket
    if kind is UnixDomainSocketConnection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(_CONNECT_TIMEOUT_S)
        sock.connect(url["path"])
    else:
        sock = socket.create_connection(
            (url.get("host", "localhost"), url.get("port", 6379)), timeout=_CONNECT_TIMEOUT_S
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if kind is SSLConnection:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=url.get("host"))
    try:
        password = url.get("password")
        if password is not None:
            user = url.get("username")
            credentials = (user.encode(), password.encode()) if user else (password.encode(),)
            sock.sendall(_command(b"AUTH", *credentials))
            reply = _reply(sock)
            if reply != b"OK":
                raise redis.AuthenticationError(f"Redis refused the credentials: {reply}")
        sock.sendall(
            _command(b"PSUBSCRIBE", protocol.DONE_CHANNEL_PATTERN.encode())
            + _command(b"SUBSCRIBE", INVALIDATE_CHANNEL.encode())
        )
    except BaseException:
        sock.close()
        raise
    return sock


def _reply(sock: socket.socket) -> Any:
    reader = hiredis.Reader()
    while (reply := reader.gets()) is False:
        data = sock.recv(_READ_BYTES)
        if not data:
            raise redis.ConnectionError("Redis closed the connection")
        reader.feed(data)
    return reply

"""The dispatcher: claims due records, sends them through the adapters, settles the outcome.

Shape: one *lane* per platform, each with ``concurrency_for(platform)`` workers and its own
rate limit, so a platform that is down or slow only ties up its own workers (the shared
HTTP connection pool is sized for the sum of all lanes). A worker loops:

    claim (lease) ─▶ group by adapter.batch_key, at most adapter.max_batch per request
        ─▶ adapter.build ─▶ httpx ─▶ adapter.classify
        ─▶ ok: ack │ retry: reschedule with backoff, or dead after max_attempts
                   │ permanent: split a rejected batch in halves until the bad event is
                   │            alone, then dead-letter it with the platform's reason

The one retry predicate: httpx transport errors (connection refused, reset, timeouts) are
retried here without asking the adapter; every answer goes through ``adapter.classify``,
whose default treats 408, 429 and 5xx as retryable and honours ``Retry-After``.

Rate limits (``DeliveryConfig.rate_limits``) count events per second, not requests: Rokt's
limit of about 270 batches/s counts each batch (one event) of a ``bulkevents`` request.

Records older than ``max_age_seconds`` (event time; Meta rejects a whole request holding
one event over 7 days old) are dead-lettered before they are sent.

Costs kept off the hot path: a worker writes the acks of one claim in the same outbox
call as its next claim; the SQLite store gets a single outbox thread (its calls serialize
anyway), whose connection keeps a warm page cache, and a passive WAL checkpoint at most
once a second, so ``track()`` never runs one; a batching adapter builds its request from
the stored item texts (``Adapter.build_stored``) without parsing them.

Graceful stop: workers stop claiming, finish the request in flight within
``shutdown_grace`` seconds, and release what they had claimed but not sent, so another
dispatcher can take it at once instead of waiting for the lease to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from ..config import DeliveryConfig
from ..platforms._base import Adapter, Outcome
from ._base import Claimed, Outbox
from .backoff import TokenBucket, backoff_delay
from .metrics import Metrics

__all__ = ["Dispatcher", "ThreadDispatcher"]

log = logging.getLogger("tracking_mw")

# One-event-per-request platforms: records a worker claims at once, to spread the cost of
# a claim (and of the acks, written once per claim) over several requests. Kept small so
# the leases of the queued ones stay young.
_PREFETCH = 32

# Seconds between two outbox checkpoints (see Outbox.checkpoint).
_CHECKPOINT_INTERVAL = 1.0

_T = TypeVar("_T")

# Delivered records waiting for their ack, grouped by the answer they got.
_Acks = dict[tuple[int | None, str | None], list[Claimed]]


class Dispatcher:
    """Delivers the outbox's records. ``await run()`` until ``request_stop()``."""

    def __init__(
        self,
        outbox: Outbox,
        adapters: Mapping[str, Adapter],
        config: DeliveryConfig,
        metrics: Metrics | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        prune_interval: float = 60.0,
    ) -> None:
        self.outbox = outbox
        self.adapters = dict(adapters)
        self.config = config
        self.metrics = metrics or Metrics()
        self._transport = transport
        self._clock = clock
        self._prune_interval = prune_interval
        self._stop: asyncio.Event | None = None
        self._client: httpx.AsyncClient | None = None
        self._buckets: dict[str, TokenBucket] = {}
        self._held: dict[int, dict[str, Claimed]] = {}
        self._next_checkpoint = 0.0
        self._urls: dict[str, httpx.URL] = {}
        self._idle_exit = False
        self._pool: ThreadPoolExecutor | None = None

    # -- control -----------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the running dispatcher to stop (call from its event loop's thread)."""
        if self._stop is not None:
            self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop is not None and self._stop.is_set()

    async def run(self, *, until_idle: bool = False) -> None:
        """Deliver until :meth:`request_stop`; with ``until_idle``, until nothing is due now."""
        self._stop = asyncio.Event()
        self._idle_exit = until_idle
        total = sum(self.config.concurrency_for(p) for p in self.adapters) or 1
        # Outbox calls block (SQLite, Redis): they run in a pool of this dispatcher's own,
        # one thread per worker, so they never queue behind the app's own executor work.
        # A store that serializes its calls anyway (SQLite) gets a single thread, so one
        # connection with a warm page cache makes every claim and ack.
        threads = min(total + 1, 64) if self.outbox.parallel_io else 1
        self._pool = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="tracking_mw-outbox"
        )
        self._client = _client(
            transport=self._transport,
            timeout=self.config.timeout,
            limits=httpx.Limits(max_connections=total + 2, max_keepalive_connections=total + 2),
        )
        for name in self.adapters:
            rate = self.config.rate_limits.get(name)
            if rate:
                self._buckets[name] = TokenBucket(float(rate))
        workers: list[asyncio.Task[None]] = []
        wid = 0
        for name, adapter in self.adapters.items():
            for _ in range(self.config.concurrency_for(name)):
                workers.append(asyncio.create_task(self._worker(wid, name, adapter)))
                wid += 1
        pruner = None if until_idle else asyncio.create_task(self._pruner())
        try:
            if until_idle:
                await asyncio.gather(*workers)
            else:
                await self._stop.wait()
                await self._drain(workers)
        finally:
            if pruner is not None:
                pruner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pruner
            for t in workers:
                t.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self._client.aclose()
            self._pool.shutdown(wait=False)

    async def _drain(self, workers: Sequence[asyncio.Task[None]]) -> None:
        if not workers:
            return
        _, late = await asyncio.wait(workers, timeout=self.config.shutdown_grace)
        if late:
            log.warning(
                "tracking_mw: %d delivery worker(s) still busy after the shutdown grace;"
                " their records stay in the outbox",
                len(late),
            )
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _pruner(self) -> None:
        while True:
            try:
                n = await self._io(self.outbox.prune, self._clock())
                if n:
                    log.info("tracking_mw: pruned %d old outbox record(s)", n)
            except Exception as exc:
                log.warning("tracking_mw: outbox prune failed: %s", type(exc).__name__)
            await asyncio.sleep(self._prune_interval)

    # -- workers -----------------------------------------------------------------------

    async def _io(self, fn: Callable[..., _T], *args: Any) -> _T:
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    async def _sleep_or_stop(self, seconds: float) -> None:
        assert self._stop is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _worker(self, wid: int, name: str, adapter: Adapter) -> None:
        cfg = self.config
        size = adapter.max_batch if adapter.max_batch > 1 else _PREFETCH
        failures = 0
        acks: _Acks = {}
        try:
            while not self.stopping:
                try:
                    # The acks of the previous claim are written by the same call, in the
                    # same thread, just before the next claim: one hop to the pool per claim.
                    batch = await self._io(self._ack_then_claim, name, acks, size)
                    failures = 0
                except Exception as exc:
                    failures += 1
                    if failures == 1:
                        log.warning(
                            "tracking_mw: %s: cannot claim from the outbox: %s",
                            name,
                            type(exc).__name__,
                        )
                    await self._sleep_or_stop(min(cfg.poll_interval * 2**failures, 5.0))
                    continue
                if not batch:
                    if self._idle_exit:
                        return
                    await self._sleep_or_stop(cfg.poll_interval)
                    continue
                claimed_at = time.monotonic()
                held = self._held[wid] = {c.record_id: c for c in batch}
                try:
                    for chunk in _chunks(batch, adapter):
                        # Stop, or a lease close to its end (a slow platform): give the rest
                        # back rather than risk another dispatcher sending it meanwhile.
                        if self.stopping or time.monotonic() - claimed_at > cfg.lease_seconds * 0.8:
                            break
                        await self._send(name, adapter, chunk, acks)
                        for c in chunk:
                            del held[c.record_id]
                except Exception as exc:  # a bug must not silently cost this lane a worker
                    log.error("tracking_mw: %s: delivery failed: %s", name, type(exc).__name__)
                    await self._sleep_or_stop(cfg.poll_interval)
                rest = list(self._held.pop(wid, {}).values())
                if rest:
                    await self._io(self._release_quietly, rest)
            await self._io(self._ack_quietly, name, acks)
        finally:
            # Cancelled at the end of the shutdown grace: record what went out, hand back
            # what is still held.
            self._ack_quietly(name, acks)
            rest = list(self._held.pop(wid, {}).values())
            if rest:
                self._release_quietly(rest)

    def _ack_then_claim(self, name: str, acks: _Acks, size: int) -> list[Claimed]:
        # One write for every delivery of the previous claim (and, now and then, the
        # outbox's housekeeping). A crash before it means those events are sent again
        # later: at-least-once, with the same event_id.
        self._ack_quietly(name, acks)
        return self.outbox.claim(name, size, self.config.lease_seconds, self._clock())

    def _ack_quietly(self, name: str, acks: _Acks) -> None:
        if not acks:
            return
        groups = list(acks.items())
        acks.clear()
        for (status, text), records in groups:
            try:
                self.outbox.ack(records, self._clock(), status, text)
            except Exception as exc:  # leases expire and the records are sent again
                log.warning("tracking_mw: outbox update failed: %s", type(exc).__name__)
                continue
            self.metrics.add(name, "delivered", len(records))
        # At most once a second, whichever worker gets here first (SQLite: a passive WAL
        # checkpoint, so that track() never runs one inside its commit).
        now = time.monotonic()
        if now >= self._next_checkpoint:
            self._next_checkpoint = now + _CHECKPOINT_INTERVAL
            try:
                self.outbox.checkpoint()
            except Exception as exc:
                log.warning("tracking_mw: outbox checkpoint failed: %s", type(exc).__name__)

    def _release_quietly(self, records: Sequence[Claimed]) -> None:
        try:
            self.outbox.release(records, self._clock())
        except Exception as exc:  # the lease will expire instead
            log.warning("tracking_mw: could not release leases: %s", type(exc).__name__)

    async def _send(self, name: str, adapter: Adapter, chunk: list[Claimed], acks: _Acks) -> None:
        now = self._clock()
        too_old = [c for c in chunk if now - c.event_time > self.config.max_age_seconds]
        if too_old:
            await self._bury(name, too_old, "event too old to send", None, None)
            chunk = [c for c in chunk if now - c.event_time <= self.config.max_age_seconds]
            if not chunk:
                return
        bucket = self._buckets.get(name)
        if bucket is not None:
            wait = bucket.take(len(chunk))
            if wait > 0:
                await asyncio.sleep(wait)
        try:
            if adapter.builds_stored:
                request = adapter.build_stored([c.item_json for c in chunk])
            else:
                request = adapter.build([c.item for c in chunk])
        except Exception as exc:
            log.error(
                "tracking_mw: %s: adapter could not build a request: %s", name, type(exc).__name__
            )
            await self._bury(
                name, chunk, f"could not build the request: {type(exc).__name__}", None, None
            )
            return
        assert self._client is not None
        status: int | None = None
        body = b""
        try:
            response = await self._client.request(
                request.method,
                self._url(request.url),
                headers=dict(request.headers),
                content=request.body,
            )
            status = response.status_code
            body = response.content
            outcome = adapter.classify(status, response.headers, body, len(chunk))
        except httpx.HTTPError as exc:
            outcome = Outcome.retry(f"network error: {type(exc).__name__}")
        except Exception as exc:
            log.error(
                "tracking_mw: %s: adapter could not classify an answer: %s",
                name,
                type(exc).__name__,
            )
            outcome = Outcome.retry(f"could not classify the answer: {type(exc).__name__}")
        text = body.decode("utf-8", "replace") if body else None
        if outcome.kind == "ok":
            acks.setdefault((status, text), []).extend(chunk)
        elif outcome.kind == "retry":
            await self._retry(name, chunk, outcome, status, text)
        elif len(chunk) > 1:
            # The platform refused the request as a whole: find the event(s) at fault.
            half = len(chunk) // 2
            await self._send(name, adapter, chunk[:half], acks)
            await self._send(name, adapter, chunk[half:], acks)
        else:
            await self._bury(name, chunk, outcome.reason or "rejected", status, text)

    def _url(self, url: str) -> httpx.URL:
        """``httpx.URL(url)``, parsed once: a platform posts to one or a few URLs, and
        parsing one costs more than the rest of a small request's own work here."""
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = httpx.URL(url)
            if len(self._urls) < 256:
                self._urls[url] = parsed
        return parsed

    async def _retry(
        self,
        name: str,
        chunk: list[Claimed],
        outcome: Outcome,
        status: int | None,
        text: str | None,
    ) -> None:
        cfg = self.config
        now = self._clock()
        later: list[tuple[Claimed, float]] = []
        dead: list[Claimed] = []
        for c in chunk:
            attempts = c.attempts + 1
            if attempts >= cfg.max_attempts:
                dead.append(c)
            else:
                delay = backoff_delay(
                    attempts,
                    base=cfg.backoff_base,
                    cap=cfg.backoff_cap,
                    retry_after=outcome.retry_after,
                )
                later.append((c, now + delay))
        if later:
            log.warning(
                "tracking_mw: %s: %d record(s) will be retried (HTTP %s)",
                name,
                len(later),
                status or "-",
            )
            await self._settle(
                self.outbox.reschedule, later, now, outcome.reason or "retry", status, text
            )
            self.metrics.add(name, "retried", len(later))
        if dead:
            await self._bury(name, dead, f"too many attempts: {outcome.reason}", status, text)

    async def _bury(
        self, name: str, records: list[Claimed], reason: str, status: int | None, text: str | None
    ) -> None:
        log.warning(
            "tracking_mw: %s: %d record(s) moved to dead letters (HTTP %s)",
            name,
            len(records),
            status or "-",
        )
        await self._settle(self.outbox.bury, records, self._clock(), reason, status, text)
        self.metrics.add(name, "dead", len(records))

    async def _settle(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            await self._io(fn, *args)
        except Exception as exc:  # leases expire and the records are tried again
            log.warning("tracking_mw: outbox update failed: %s", type(exc).__name__)


class _NoCookies(httpx.Cookies):
    """A cookie store that keeps nothing. Platform APIs set no cookie a later request needs,
    and httpx parses every answer's cookies through http.cookiejar: a few per cent of the
    dispatcher's time per request, for nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def _client(**kwargs: Any) -> httpx.AsyncClient:
    client = httpx.AsyncClient(**kwargs)
    # The setter would copy the jar into a plain Cookies: set the store itself. Should a
    # future httpx store cookies elsewhere, the client just keeps them, as before.
    if isinstance(getattr(client, "_cookies", None), httpx.Cookies):
        client._cookies = _NoCookies()
    return client


def _chunks(batch: Sequence[Claimed], adapter: Adapter) -> list[list[Claimed]]:
    """Group records by batch key, at most ``max_batch`` per request, keeping claim order."""
    if adapter.max_batch <= 1:
        return [[c] for c in batch]
    groups: dict[str, list[Claimed]] = {}
    for c in batch:
        groups.setdefault(c.batch_key, []).append(c)
    out: list[list[Claimed]] = []
    for items in groups.values():
        for i in range(0, len(items), adapter.max_batch):
            out.append(items[i : i + adapter.max_batch])
    return out


class ThreadDispatcher:
    """A dispatcher on its own event loop in a daemon thread (WSGI apps, the CLI).

    ``alive`` is False in a process forked after the thread started (the thread does not
    survive ``fork()``), which is how the runtime knows to start a new one in the child.
    """

    def __init__(self, factory: Callable[[], Dispatcher]) -> None:
        self._factory = factory
        self._pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatcher: Dispatcher | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._main, name="tracking_mw-dispatcher", daemon=True
        )

    def start(self) -> None:
        """Start the thread and wait until its loop runs."""
        self._thread.start()
        self._ready.wait(10)

    @property
    def alive(self) -> bool:
        """The thread runs in this very process."""
        return self._pid == os.getpid() and self._thread.is_alive()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._dispatcher = self._factory()

            async def main() -> None:
                assert self._dispatcher is not None
                task = asyncio.create_task(self._dispatcher.run())
                await asyncio.sleep(0)
                self._ready.set()
                await task

            loop.run_until_complete(main())
        except Exception as exc:
            log.error("tracking_mw: dispatcher thread failed: %s", type(exc).__name__)
        finally:
            self._ready.set()
            loop.close()

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully and wait for the thread (at most ``timeout`` seconds)."""
        if not self.alive or self._loop is None or self._dispatcher is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(self._dispatcher.request_stop)
        self._thread.join(timeout)

"""The dispatcher: claims due records, sends them through the adapters, settles the outcome.

Shape: one *lane* per platform, each with ``concurrency_for(platform)`` workers and its own
rate limit, so a platform that is down or slow only ties up its own workers (the shared
HTTP connection pool is sized for the sum of all lanes). A worker loops:

    claim (lease) ─▶ group by adapter.batch_key, at most adapter.max_batch per request
        ─▶ adapter.build ─▶ httpx ─▶ adapter.classify
        ─▶ ok: ack │ retry: reschedule with backoff, or dead after max_attempts
                   │ permanent: split a rejected batch in halves until the bad event is
                   │            alone, then dead-letter it with the platform's reason;
                   │            an answer about the request itself (``Outcome.request_wide``,
                   │            HTTP 401 or 403) dead-letters all its events, unsplit

Leases: a worker reckons its lease from just before it asks for the claim (the store starts
it later, so this errs early). It starts no request, not even one half of a split batch,
after 80% of the lease, and cuts short a request still unanswered at 95% (tried again, as
after a timeout); what it has not sent by then goes back to the outbox for a later claim.
Each request's outcome (ack, reschedule, dead letter) is written with the first outcome
that comes ``_WRITE_WITHIN`` (50 ms) or more after the worker's last write, and always
before it claims again, so within the lease: a lease that runs out never makes a delivered
record claimable again. Outcomes of a fast platform's requests share one write (a
transaction per request would halve a one-event-per-request platform's throughput); a slow
platform's are written after each request. A crash resends what was answered since the
last write (at-least-once). A write the outbox
refuses is kept and made again before anything else (the writes are idempotent); until it
succeeds the worker sends and claims nothing more, and after 8 refusals in a row it gives
up on that write (its records are sent again once their lease ends: at-least-once).

The one retry predicate: httpx transport errors (connection refused, reset, timeouts) are
retried here without asking the adapter; every answer goes through ``adapter.classify``,
whose default treats 408, 429 and 5xx as retryable and honours ``Retry-After``.

Rate limits (``DeliveryConfig.rate_limits``) count events per second, not requests: Rokt's
limit of about 270 batches/s counts each batch (one event) of a ``bulkevents`` request.

Records older than ``max_age_seconds`` (event time; Meta rejects a whole request holding
one event over 7 days old) are dead-lettered before they are sent.

Costs kept off the hot path: the SQLite store gets a single outbox thread (its calls
serialize anyway), whose connection keeps a warm page cache, and a passive WAL checkpoint
at most once a second, so ``track()`` never runs one; a batching adapter builds its request
from the stored item texts (``Adapter.build_stored``) without parsing them.

Counters: ``delivered``, ``retried`` and ``dead`` count a record when the outbox has taken
its outcome, once; a write that fails is counted when it is made again.

Graceful stop: workers stop claiming, finish the request in flight within
``shutdown_grace`` seconds, and release what they had claimed but not sent, so another
dispatcher can take it at once instead of waiting for the lease to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from .._errors import OutboxError
from .._json import clean_text
from ..config import DeliveryConfig
from ..platforms._base import Adapter, Outcome
from ._base import Claimed, Outbox
from .backoff import TokenBucket, backoff_delay
from .metrics import Metrics

__all__ = ["Dispatcher", "ThreadDispatcher"]

log = logging.getLogger("tracking_mw")

# One-event-per-request platforms: records a worker claims at once, to spread the cost of
# a claim over several requests. Kept small so the leases of the queued ones stay young.
_PREFETCH = 32

# Parts of a lease, reckoned from just before the claim was asked for: no request starts
# after the first, and one still unanswered at the second is cut short. The rest is for
# writing the outcome before the record can be claimed by anyone else.
_SEND_WITHIN = 0.8
_FINISH_WITHIN = 0.95

# Answers about the request itself (credentials), whatever the platform: never split.
_REQUEST_WIDE_STATUS = frozenset({401, 403})

# Outcomes wait at most this long (dispatcher clock, seconds) for others to share their write.
_WRITE_WITHIN = 0.05

# A write of outcomes the outbox refused this many times running is given up (and logged):
# its records are tried again when their lease ends. Until then the worker claims nothing.
_WRITE_TRIES = 8
_DONE = {"delivered": "were delivered", "retried": "will be retried", "dead": "are dead"}

# Seconds between two outbox checkpoints (see Outbox.checkpoint).
_CHECKPOINT_INTERVAL = 1.0

_T = TypeVar("_T")


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
        rate = cfg.rate_limits.get(name)
        if rate:
            # A claim this lane's rate lets the workers send within half a lease: a rate
            # limit never makes a worker wait past its lease (see _send).
            size = min(size, max(1, int(rate * cfg.lease_seconds / 2 / cfg.concurrency_for(name))))
        failures = 0
        pending = _Pending()
        try:
            while not self.stopping:
                # Taken before the claim is asked for: the store starts the lease later
                # (after the writes made first, after any wait for its lock), so the
                # deadlines reckoned from here come early, never late.
                start = self._clock()
                try:
                    batch = await self._io(self._flush_then_claim, name, pending, size)
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
                lease = _Lease(batch, start, cfg.lease_seconds)
                self._held[wid] = lease.held
                try:
                    for chunk in _chunks(batch, adapter):
                        if not self._may_send(lease):
                            break
                        await self._send(name, adapter, chunk, lease, pending)
                except Exception as exc:  # a bug must not silently cost this lane a worker
                    log.error("tracking_mw: %s: delivery failed: %s", name, type(exc).__name__)
                    await self._sleep_or_stop(cfg.poll_interval)
                # What got no answer (stop, end of the lease, a failed write): given back,
                # so a later claim sends it instead of waiting for the lease to end.
                rest = list(self._held.pop(wid, {}).values())
                if rest:
                    await self._io(self._release_quietly, rest)
                    if lease.stopped:  # no claiming it straight back (a rate-limit wait)
                        await self._sleep_or_stop(cfg.poll_interval)
            await self._io(self._flush, name, pending)
        finally:
            # Cancelled at the end of the shutdown grace: record what went out, hand back
            # what is still held.
            self._flush(name, pending)
            rest = list(self._held.pop(wid, {}).values())
            if rest:
                self._release_quietly(rest)

    def _may_send(self, lease: _Lease) -> bool:
        """Whether a worker may start one more request with records of ``lease``."""
        return not self.stopping and not lease.stopped and self._clock() < lease.send_by

    def _flush_then_claim(self, name: str, pending: _Pending, size: int) -> list[Claimed]:
        # Outcomes not yet written come first. While the outbox refuses them, the worker
        # takes no more work: it could not record what happens to it either.
        error = self._flush(name, pending)
        if error is not None:
            raise error
        return self.outbox.claim(name, size, self.config.lease_seconds, self._clock())

    def _flush(self, name: str, pending: _Pending) -> Exception | None:
        """Make the pending writes, oldest first, in the calling thread. The first that
        fails and those after it stay pending (each write may be made again: the outbox's
        ack, reschedule and bury are idempotent); returns its error, else None."""
        pending.flushed_at = self._clock()
        writes = _merged(pending.take())
        if not writes:
            return None
        error: Exception | None = None
        for i, w in enumerate(writes):
            try:
                w.fn(w.records, self._clock(), *w.args)
            except Exception as exc:
                error = exc
                # An outage (OutboxError) may pass; any other error is this write's own and
                # would recur: given up at once rather than stall the worker for 8 tries.
                w.tries = w.tries + 1 if isinstance(exc, OutboxError) else _WRITE_TRIES
                if w.tries < _WRITE_TRIES:
                    if w.tries == 1:
                        log.warning(
                            "tracking_mw: %s: outbox update failed, will try again: %s",
                            name,
                            type(exc).__name__,
                        )
                    pending.restore(writes[i:])
                else:
                    log.error(
                        "tracking_mw: %s: gave up recording that %d record(s) %s: %s;"
                        " they are tried again when their lease ends",
                        name,
                        w.count,
                        _DONE[w.metric],
                        type(exc).__name__,
                    )
                    pending.restore(writes[i + 1 :])
                break
            # Counted once the outbox has it, so a write made again is not counted twice.
            self.metrics.add(name, w.metric, w.count)
        self._checkpoint()
        return error

    def _checkpoint(self) -> None:
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

    async def _send(
        self,
        name: str,
        adapter: Adapter,
        chunk: list[Claimed],
        lease: _Lease,
        pending: _Pending,
    ) -> None:
        now = self._clock()
        too_old = [c for c in chunk if now - c.event_time > self.config.max_age_seconds]
        if too_old:
            await self._bury(name, lease, pending, too_old, "event too old to send", None, None)
            chunk = [c for c in chunk if now - c.event_time <= self.config.max_age_seconds]
            if not chunk:
                return
        # Checked before every request, those of a split too: what is not sent stays held
        # and the worker gives it back for a later claim.
        if not self._may_send(lease):
            return
        bucket = self._buckets.get(name)
        if bucket is not None:
            wait = bucket.take(len(chunk))
            if wait > 0:
                if self._clock() + wait >= lease.send_by:
                    # The wait would outlast the lease: the chunk is given back for a later
                    # claim, and its tokens to the bucket (they were not used).
                    bucket.give_back(len(chunk))
                    lease.stopped = True
                    return
                # Outcomes held back (see _WRITE_WITHIN) are written before a wait.
                if pending and await self._io(self._flush, name, pending) is not None:
                    lease.stopped = True
                    return
                await asyncio.sleep(wait)
                if not self._may_send(lease):
                    return
        try:
            if adapter.builds_stored:
                request = adapter.build_stored([c.item_json for c in chunk])
            else:
                request = adapter.build([c.item for c in chunk])
        except Exception as exc:
            log.error(
                "tracking_mw: %s: adapter could not build a request: %s", name, type(exc).__name__
            )
            reason = f"could not build the request: {type(exc).__name__}"
            await self._bury(name, lease, pending, chunk, reason, None, None)
            return
        assert self._client is not None
        status: int | None = None
        body = b""
        try:
            # A request still unanswered near the lease's end is cut short (and tried
            # again, as after a timeout) rather than left running while another
            # dispatcher may claim and send the same records. httpx's timeouts do not
            # bound it: each read has its own, and a slow answer trickling in outlasts them.
            async with asyncio.timeout(max(lease.end - self._clock(), 0.0)):
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
        except TimeoutError:
            outcome = Outcome.retry("no answer before the lease's end")
        except Exception as exc:
            log.error(
                "tracking_mw: %s: adapter could not classify an answer: %s",
                name,
                type(exc).__name__,
            )
            outcome = Outcome.retry(f"could not classify the answer: {type(exc).__name__}")
        text = body.decode("utf-8", "replace") if body else None
        if outcome.kind == "ok":
            await self._settle(
                name,
                lease,
                pending,
                chunk,
                _Write("delivered", self.outbox.ack, chunk, status, text),
            )
        elif outcome.kind == "retry":
            await self._retry(name, lease, pending, chunk, outcome, status, text)
        elif len(chunk) > 1 and not (outcome.request_wide or status in _REQUEST_WIDE_STATUS):
            # The platform refused the request as a whole: find the event(s) at fault.
            half = len(chunk) // 2
            await self._send(name, adapter, chunk[:half], lease, pending)
            await self._send(name, adapter, chunk[half:], lease, pending)
        else:
            # One event, or an answer about the request itself (a bad token, a missing
            # permission): every event of it shares the reason, and splitting would only
            # send 2n - 1 requests that all fail the same way.
            reason = outcome.reason or "rejected"
            await self._bury(name, lease, pending, chunk, reason, status, text)

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
        lease: _Lease,
        pending: _Pending,
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
        writes: list[_Write] = []
        if later:
            log.warning(
                "tracking_mw: %s: %d record(s) will be retried (HTTP %s)",
                name,
                len(later),
                status or "-",
            )
            reason = outcome.reason or "retry"
            writes.append(_Write("retried", self.outbox.reschedule, later, reason, status, text))
        if dead:
            self._log_dead(name, len(dead), status)
            reason = f"too many attempts: {outcome.reason}"
            writes.append(_Write("dead", self.outbox.bury, dead, reason, status, text))
        await self._settle(name, lease, pending, chunk, *writes)

    async def _bury(
        self,
        name: str,
        lease: _Lease,
        pending: _Pending,
        records: list[Claimed],
        reason: str,
        status: int | None,
        text: str | None,
    ) -> None:
        self._log_dead(name, len(records), status)
        write = _Write("dead", self.outbox.bury, records, reason, status, text)
        await self._settle(name, lease, pending, records, write)

    @staticmethod
    def _log_dead(name: str, n: int, status: int | None) -> None:
        log.warning(
            "tracking_mw: %s: %d record(s) moved to dead letters (HTTP %s)",
            name,
            n,
            status or "-",
        )

    async def _settle(
        self,
        name: str,
        lease: _Lease,
        pending: _Pending,
        records: Sequence[Claimed],
        *writes: _Write,
    ) -> None:
        """Record the outcome of ``records``: now, or with the next outcomes when the last
        write was under _WRITE_WITHIN ago; in any case before the next claim, so a lease
        that runs out later finds them delivered (or dead, or rescheduled), never claimable."""
        for c in records:
            lease.held.pop(c.record_id, None)  # answered: never given back unsent
        pending.add(writes)
        if self._clock() - pending.flushed_at < _WRITE_WITHIN:
            return  # made with the next outcomes, or before the next claim
        if await self._io(self._flush, name, pending) is not None:
            # The outbox refuses writes: send nothing more of this claim. The worker tries
            # the writes again before it claims again.
            lease.stopped = True


class _Lease:
    """The records one claim leased to a worker, and until when it may use them."""

    __slots__ = ("end", "held", "send_by", "stopped")

    def __init__(self, batch: Sequence[Claimed], start: float, seconds: float) -> None:
        #: Claimed and not answered yet: given back if the worker stops sending.
        self.held: dict[str, Claimed] = {c.record_id: c for c in batch}
        #: No request starts after this.
        self.send_by = start + seconds * _SEND_WITHIN
        #: A request still unanswered by then is cut short.
        self.end = start + seconds * _FINISH_WITHIN
        #: An outcome could not be written: no more requests with this claim.
        self.stopped = False


class _Write:
    """One outcome for the outbox: ``fn(records, now, *args)``, with ``fn`` its ``ack``,
    ``reschedule`` or ``bury``; once made, ``count`` is added to the ``metric`` counter."""

    __slots__ = ("args", "count", "fn", "metric", "records", "tries")

    def __init__(
        self, metric: str, fn: Callable[..., None], records: Sequence[Any], *args: Any
    ) -> None:
        self.metric = metric
        self.fn = fn
        self.records = records
        # A reason quoting the platform's answer may hold a lone surrogate (a JSON "\ud83d"):
        # stored as U+FFFD, as any text is, or the write would fail every time.
        self.args = tuple(clean_text(a) if isinstance(a, str) else a for a in args)
        self.count = len(records)
        self.tries = 0


def _merged(writes: list[_Write]) -> list[_Write]:
    """``writes`` with neighbours of one kind (same outbox method, same answer) made one: the
    outcomes of a fast platform's requests share one transaction. Writes already refused
    once keep their own count of tries."""
    out: list[_Write] = []
    for w in writes:
        last = out[-1] if out else None
        if (
            last is not None
            and last.tries == 0
            and w.tries == 0
            and last.fn == w.fn
            and last.args == w.args
        ):
            last.records = [*last.records, *w.records]
            last.count += w.count
        else:
            out.append(w)
    return out


class _Pending:
    """A worker's outcomes not yet in the outbox.

    A worker cancelled at the end of the shutdown grace makes its last writes in the event
    loop's thread while a pool thread may still be making earlier ones: each write is taken
    out under a lock before it is made, so none is made (or counted) twice.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._writes: list[_Write] = []
        #: When the last write was made (dispatcher clock): see _WRITE_WITHIN.
        self.flushed_at = -math.inf

    def add(self, writes: Iterable[_Write]) -> None:
        with self._lock:
            self._writes.extend(writes)

    def restore(self, writes: Sequence[_Write]) -> None:
        """Put back writes that were taken but not made, ahead of any added since."""
        with self._lock:
            self._writes[:0] = writes

    def __bool__(self) -> bool:
        return bool(self._writes)

    def take(self) -> list[_Write]:
        with self._lock:
            writes, self._writes = self._writes, []
            return writes


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

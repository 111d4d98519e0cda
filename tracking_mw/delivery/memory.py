"""``memory://``: an outbox in this process's memory. For tests only: NOT durable.

Everything queued is lost when the process exits, and other processes (``tracking-mw``
commands, other workers) cannot see it. It follows the same contract as the durable stores,
so tests of the tracker and dispatcher run against it without a file or a server.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._fork import fork_safe_rlock
from ._base import (
    DEAD,
    DELIVERED,
    PENDING,
    RETRYING,
    Claimed,
    DeliveryView,
    NewRecord,
    Outbox,
    OutboxOptions,
    empty_stats,
    excerpt,
    new_token,
)

__all__ = ["MemoryOutbox"]


@dataclass(slots=True)
class _Row:
    record_id: int
    platform: str
    event_id: str
    event_name: str
    batch_key: str
    event_time: float
    item: dict[str, Any]
    status: str
    attempts: int
    created_at: float
    updated_at: float
    next_attempt_at: float
    lease: str | None = None
    last_status: int | None = None
    last_response: str | None = None
    last_error: str | None = None

    def view(self) -> DeliveryView:
        return DeliveryView(
            record_id=str(self.record_id),
            platform=self.platform,
            event_id=self.event_id,
            event_name=self.event_name,
            status=self.status,
            attempts=self.attempts,
            created_at=self.created_at,
            updated_at=self.updated_at,
            next_attempt_at=self.next_attempt_at if self.status in (PENDING, RETRYING) else None,
            item=copy.deepcopy(self.item),
            last_status=self.last_status,
            last_response=self.last_response,
            last_error=self.last_error,
        )


def _settle(
    row: _Row, status: str, now: float, http: int | None, response: str | None, error: str | None
) -> None:
    """Record one finished try of ``row`` (its lease ends here)."""
    row.status = status
    row.attempts += 1
    row.updated_at = now
    row.lease = None
    row.last_status = http
    row.last_response = excerpt(response)
    row.last_error = error


class MemoryOutbox(Outbox):
    """A dict of records behind a lock. Not durable: tests only."""

    durable = False

    def __init__(self, options: OutboxOptions | None = None) -> None:
        self.options = options or OutboxOptions()
        self._lock = fork_safe_rlock()
        self._rows: dict[int, _Row] = {}
        self._keys: dict[tuple[str, str], int] = {}
        self._links: dict[str, tuple[dict[str, Any], float]] = {}
        self._seq = 0

    @classmethod
    def from_url(cls, url: str) -> MemoryOutbox:
        """Build from ``memory://`` (query options as for the other stores)."""
        options, _ = OutboxOptions.from_url(url)
        return cls(options)

    def add(self, records: Sequence[NewRecord], now: float) -> list[bool]:
        # Items are copied before anything is stored: a copy that fails leaves the outbox
        # as it was, as a rolled-back transaction does in the durable stores.
        items = [copy.deepcopy(dict(r.item)) for r in records]
        out: list[bool] = []
        with self._lock:
            for r, item in zip(records, items, strict=True):
                key = (r.platform, r.event_id)
                if key in self._keys:
                    out.append(False)
                    continue
                self._seq += 1
                self._rows[self._seq] = _Row(
                    record_id=self._seq,
                    platform=r.platform,
                    event_id=r.event_id,
                    event_name=r.event_name,
                    batch_key=r.batch_key,
                    event_time=r.event_time,
                    item=item,
                    status=PENDING,
                    attempts=0,
                    created_at=now,
                    updated_at=now,
                    next_attempt_at=now,
                )
                self._keys[key] = self._seq
                out.append(True)
        return out

    def claim(self, platform: str, limit: int, lease_seconds: float, now: float) -> list[Claimed]:
        token = new_token()
        with self._lock:
            due = sorted(
                (
                    row
                    for row in self._rows.values()
                    if row.platform == platform
                    and row.status in (PENDING, RETRYING)
                    and row.next_attempt_at <= now
                ),
                key=lambda row: (row.next_attempt_at, row.record_id),
            )[:limit]
            out = []
            for row in due:
                row.next_attempt_at = now + lease_seconds
                row.lease = token
                out.append(
                    Claimed(
                        record_id=str(row.record_id),
                        platform=row.platform,
                        event_id=row.event_id,
                        event_name=row.event_name,
                        batch_key=row.batch_key,
                        event_time=row.event_time,
                        item=copy.deepcopy(row.item),
                        attempts=row.attempts,
                        created_at=row.created_at,
                        lease=token,
                    )
                )
            return out

    def _held(self, c: Claimed) -> _Row | None:
        row = self._rows.get(int(c.record_id))
        if row is None or row.lease != c.lease or row.status not in (PENDING, RETRYING):
            return None
        return row

    def ack(
        self, records: Sequence[Claimed], now: float, status: int | None, response: str | None
    ) -> None:
        with self._lock:
            for c in records:
                row = self._rows.get(int(c.record_id))
                if row is None or row.status == DELIVERED:
                    continue
                _settle(row, DELIVERED, now, status, response, None)

    def reschedule(
        self,
        records: Sequence[tuple[Claimed, float]],
        now: float,
        error: str,
        status: int | None,
        response: str | None,
    ) -> None:
        with self._lock:
            for c, when in records:
                row = self._held(c)
                if row is None:
                    continue
                _settle(row, RETRYING, now, status, response, error)
                row.next_attempt_at = when

    def bury(
        self,
        records: Sequence[Claimed],
        now: float,
        reason: str,
        status: int | None,
        response: str | None,
    ) -> None:
        with self._lock:
            for c in records:
                row = self._held(c)
                if row is None:
                    continue
                _settle(row, DEAD, now, status, response, reason)

    def release(self, records: Sequence[Claimed], now: float) -> None:
        with self._lock:
            for c in records:
                row = self._held(c)
                if row is not None:
                    row.lease = None
                    row.next_attempt_at = now

    def recent(self, limit: int = 100) -> list[DeliveryView]:
        with self._lock:
            ids = sorted(self._rows, reverse=True)[:limit]
            return [self._rows[i].view() for i in ids]

    def dead_letters(self, limit: int = 100) -> list[DeliveryView]:
        with self._lock:
            ids = sorted((i for i, r in self._rows.items() if r.status == DEAD), reverse=True)
            return [self._rows[i].view() for i in ids[:limit]]

    def retry_dead(self, record_ids: Sequence[str] | None, now: float) -> int:
        wanted = None if record_ids is None else {int(i) for i in record_ids if i.isdigit()}
        n = 0
        with self._lock:
            for i, row in self._rows.items():
                if row.status == DEAD and (wanted is None or i in wanted):
                    row.status = RETRYING
                    row.attempts = 0
                    row.next_attempt_at = now
                    row.updated_at = now
                    n += 1
        return n

    def stats(self, now: float) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        with self._lock:
            for row in self._rows.values():
                s = out.setdefault(row.platform, empty_stats())
                if row.status in (PENDING, RETRYING):
                    s["pending"] += 1
                    if row.status == RETRYING:
                        s["retrying"] += 1
                    s["oldest_pending_age"] = max(s["oldest_pending_age"], now - row.created_at)
                else:
                    s[row.status] += 1
        return out

    def link(self, key: str, snapshot: Mapping[str, Any], now: float) -> None:
        with self._lock:
            self._links[key] = (copy.deepcopy(dict(snapshot)), now + self.options.link_ttl)

    def linked(self, key: str, now: float) -> dict[str, Any] | None:
        with self._lock:
            found = self._links.get(key)
            if found is None or found[1] <= now:
                return None
            return copy.deepcopy(found[0])

    def prune(self, now: float) -> int:
        n = 0
        with self._lock:
            for i, row in list(self._rows.items()):
                keep = {DELIVERED: self.options.retention, DEAD: self.options.dead_retention}
                limit = keep.get(row.status)
                if limit is not None and row.updated_at < now - limit:
                    del self._rows[i]
                    del self._keys[(row.platform, row.event_id)]
                    n += 1
            for key, (_, expires) in list(self._links.items()):
                if expires <= now:
                    del self._links[key]
                    n += 1
        return n

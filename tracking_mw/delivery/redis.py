"""``redis://host:port/db``: one outbox shared by several web hosts and any number of dispatchers.

Design: **hashes + sorted sets + Lua scripts**, not Redis Streams. Why:

- A delivery record needs a *due time*: retries wait (backoff, ``Retry-After``) and a lease
  must expire. Streams deliver in insertion order only; delayed retries would need a second
  structure (a sorted set of due times) and a re-``XADD`` per retry, and ``XAUTOCLAIM``
  would recover expired leases through yet another path. One sorted set of due times per
  platform does all three: a claim moves the record's score to the end of its lease, so
  "due now" covers new records, retries and leases of dispatchers that died.
- Each step (add with dedupe, claim, ack, reschedule, bury, release) is one Lua script,
  atomic on the server: two dispatchers never claim the same record, ``(platform,
  event_id)`` is unique, and ``track()`` costs one round trip however many platforms apply.
- Every record is a hash with its status, attempts, times and last answer, which the
  inspector and ``tracking-mw dead-letters`` read directly.
- Redis runs one script at a time and serves nobody meanwhile, so work of unbounded size
  (pruning, retrying every dead letter) is many scripts of at most 1,000 records each.

Keys (prefix ``{tmw}`` by default, ``?prefix=`` to change; the braces are a Redis Cluster
hash tag keeping every key in one slot, as multi-key scripts require)::

    {tmw}:seq                 record id counter
    {tmw}:r:<id>              hash: one record
    {tmw}:ids                 hash: "<platform>\\0<event_id>" -> id (dedupe)
    {tmw}:due:<platform>      zset: id -> due time (or lease end while claimed)
    {tmw}:pend:<platform>     zset: id -> created_at, records not yet delivered nor dead
    {tmw}:retry:<platform>    set: ids waiting for a retry
    {tmw}:done:<platform>     zset: id -> delivery time (pruned after ``retention``)
    {tmw}:dead:<platform>     zset: id -> time of death (pruned after ``dead_retention``)
    {tmw}:platforms           set of platform names seen
    {tmw}:link:<sha256>       string with a TTL: a link_visitor() snapshot

Durability is the server's: run Redis with ``appendonly yes`` (``appendfsync everysec``
loses at most a second on a power cut) for an outbox that survives a Redis restart.
Times are the clients' clocks; keep hosts NTP-synchronised (leases are tens of seconds).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._errors import ConfigurationError, OutboxError
from .._json import clean_text
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
    dumps,
    empty_stats,
    excerpt,
    loads,
    new_token,
)

__all__ = ["RedisOutbox"]

_ADD = """
local p, now = ARGV[1], ARGV[2]
local out = {}
for b = 3, #ARGV, 6 do
  local platform, eid = ARGV[b], ARGV[b + 1]
  local dk = platform .. '\\0' .. eid
  if redis.call('HEXISTS', p .. ':ids', dk) == 1 then
    out[#out + 1] = 0
  else
    local id = redis.call('INCR', p .. ':seq')
    redis.call('HSET', p .. ':r:' .. id, 'platform', platform, 'event_id', eid,
      'event_name', ARGV[b + 2], 'batch_key', ARGV[b + 3], 'event_time', ARGV[b + 4],
      'item', ARGV[b + 5], 'status', 'pending', 'attempts', 0, 'created_at', now,
      'updated_at', now, 'next_attempt_at', now)
    redis.call('HSET', p .. ':ids', dk, id)
    redis.call('ZADD', p .. ':due:' .. platform, now, id)
    redis.call('ZADD', p .. ':pend:' .. platform, now, id)
    redis.call('SADD', p .. ':platforms', platform)
    out[#out + 1] = 1
  end
end
return out
"""

_CLAIM = """
local p, platform, now, lease_end, limit, token =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local due = p .. ':due:' .. platform
local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, id in ipairs(ids) do
  local key = p .. ':r:' .. id
  local f = redis.call('HMGET', key, 'event_id', 'event_name', 'batch_key', 'event_time',
    'item', 'attempts', 'created_at', 'status')
  if (not f[1]) or (f[8] ~= 'pending' and f[8] ~= 'retrying') then
    redis.call('ZREM', due, id)
  else
    redis.call('ZADD', due, lease_end, id)
    redis.call('HSET', key, 'lease', token, 'next_attempt_at', lease_end)
    out[#out + 1] = id
    for j = 1, 7 do out[#out + 1] = f[j] end
  end
end
return out
"""

_ACK = """
local p, now, status, resp = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
for i = 5, #ARGV, 2 do
  local id, platform = ARGV[i], ARGV[i + 1]
  local key = p .. ':r:' .. id
  local st = redis.call('HGET', key, 'status')
  if st and st ~= 'delivered' then
    redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('HSET', key, 'status', 'delivered', 'updated_at', now, 'last_status', status,
      'last_response', resp, 'last_error', '')
    redis.call('HDEL', key, 'lease')
    redis.call('ZREM', p .. ':due:' .. platform, id)
    redis.call('ZREM', p .. ':pend:' .. platform, id)
    redis.call('ZREM', p .. ':dead:' .. platform, id)
    redis.call('SREM', p .. ':retry:' .. platform, id)
    redis.call('ZADD', p .. ':done:' .. platform, now, id)
  end
end
return 1
"""

_RESCHEDULE = """
local p, now, err, status, resp = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
for i = 6, #ARGV, 4 do
  local id, platform, token, when = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key = p .. ':r:' .. id
  local f = redis.call('HMGET', key, 'lease', 'status')
  if f[1] == token and (f[2] == 'pending' or f[2] == 'retrying') then
    redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('HSET', key, 'status', 'retrying', 'updated_at', now, 'next_attempt_at', when,
      'last_status', status, 'last_response', resp, 'last_error', err)
    redis.call('HDEL', key, 'lease')
    redis.call('ZADD', p .. ':due:' .. platform, when, id)
    redis.call('SADD', p .. ':retry:' .. platform, id)
  end
end
return 1
"""

_BURY = """
local p, now, reason, status, resp = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
for i = 6, #ARGV, 3 do
  local id, platform, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = p .. ':r:' .. id
  local f = redis.call('HMGET', key, 'lease', 'status')
  if f[1] == token and (f[2] == 'pending' or f[2] == 'retrying') then
    redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('HSET', key, 'status', 'dead', 'updated_at', now, 'last_status', status,
      'last_response', resp, 'last_error', reason)
    redis.call('HDEL', key, 'lease')
    redis.call('ZREM', p .. ':due:' .. platform, id)
    redis.call('ZREM', p .. ':pend:' .. platform, id)
    redis.call('SREM', p .. ':retry:' .. platform, id)
    redis.call('ZADD', p .. ':dead:' .. platform, now, id)
  end
end
return 1
"""

_RELEASE = """
local p, now = ARGV[1], ARGV[2]
for i = 3, #ARGV, 3 do
  local id, platform, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = p .. ':r:' .. id
  local f = redis.call('HMGET', key, 'lease', 'status')
  if f[1] == token and (f[2] == 'pending' or f[2] == 'retrying') then
    redis.call('HDEL', key, 'lease')
    redis.call('HSET', key, 'next_attempt_at', now)
    redis.call('ZADD', p .. ':due:' .. platform, now, id)
  end
end
return 1
"""

# Either the ids given, or ('*', platform, limit) the oldest ``limit`` dead letters of one
# platform: every id read leaves that dead set (one whose record is gone too), so calling
# it again until it reads fewer than ``limit`` ends. Returns {retried, ids read}.
_RETRY_DEAD = """
local p, now = ARGV[1], ARGV[2]
local ids = {}
if ARGV[3] == '*' then
  local z = p .. ':dead:' .. ARGV[4]
  ids = redis.call('ZRANGE', z, 0, tonumber(ARGV[5]) - 1)
  for _, id in ipairs(ids) do redis.call('ZREM', z, id) end
else
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local n = 0
for _, id in ipairs(ids) do
  local key = p .. ':r:' .. id
  local f = redis.call('HMGET', key, 'status', 'platform', 'created_at')
  if f[1] == 'dead' then
    local platform = f[2]
    redis.call('HSET', key, 'status', 'retrying', 'attempts', 0, 'next_attempt_at', now,
      'updated_at', now)
    redis.call('ZREM', p .. ':dead:' .. platform, id)
    redis.call('ZADD', p .. ':due:' .. platform, now, id)
    redis.call('ZADD', p .. ':pend:' .. platform, f[3], id)
    redis.call('SADD', p .. ':retry:' .. platform, id)
    n = n + 1
  end
end
return {n, #ids}
"""

# At most ``limit`` records in all per call (see _BATCH); returns how many it removed.
_PRUNE = """
local p, done_cut, dead_cut, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local n = 0
for _, platform in ipairs(redis.call('SMEMBERS', p .. ':platforms')) do
  for _, pair in ipairs({{'done', done_cut}, {'dead', dead_cut}}) do
    if n >= limit then return n end
    local z = p .. ':' .. pair[1] .. ':' .. platform
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', pair[2], 'LIMIT', 0, limit - n)) do
      local key = p .. ':r:' .. id
      local eid = redis.call('HGET', key, 'event_id')
      if eid then redis.call('HDEL', p .. ':ids', platform .. '\\0' .. eid) end
      redis.call('DEL', key)
      redis.call('ZREM', z, id)
      n = n + 1
    end
  end
end
return n
"""

# Records one script call of prune() or retry_dead() handles at most. A script blocks the
# whole server while it runs (every track() of every host waits): a big prune or retry is
# many short calls (about 10 ms each for 1,000 dead letters of 200,000), with other
# clients served in between.
_BATCH = 1000

_OURS = ("retention", "dead_retention", "link_ttl", "prefix")
_VIEW_FIELDS = (
    "platform",
    "event_id",
    "event_name",
    "status",
    "attempts",
    "created_at",
    "updated_at",
    "next_attempt_at",
    "item",
    "last_status",
    "last_response",
    "last_error",
)


def _num(x: float) -> str:
    return repr(float(x))


def _s(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode("utf-8") if isinstance(v, bytes) else v


def _view(record_id: str, h: Mapping[bytes, bytes]) -> DeliveryView | None:
    if not h:
        return None
    g = {k.decode(): v.decode("utf-8") for k, v in h.items()}
    status = g.get("status", PENDING)
    last_status = g.get("last_status") or ""
    return DeliveryView(
        record_id=record_id,
        platform=g.get("platform", ""),
        event_id=g.get("event_id", ""),
        event_name=g.get("event_name", ""),
        status=status,
        attempts=int(g.get("attempts", "0")),
        created_at=float(g.get("created_at", "0")),
        updated_at=float(g.get("updated_at", "0")),
        next_attempt_at=(
            float(g.get("next_attempt_at", "0")) if status in (PENDING, RETRYING) else None
        ),
        item=loads(g.get("item", "{}")),
        last_status=int(last_status) if last_status.isdigit() else None,
        last_response=g.get("last_response") or None,
        last_error=g.get("last_error") or None,
    )


class RedisOutbox(Outbox):
    """The outbox in Redis (hashes, sorted sets, Lua). Needs ``tracking_mw[redis]``."""

    def __init__(self, client: Any, options: OutboxOptions | None = None, *, prefix: str = "{tmw}"):
        self.options = options or OutboxOptions()
        self.prefix = prefix
        self.client = client
        self._scripts: dict[str, Callable[..., Any]] = {
            name: client.register_script(src)
            for name, src in (
                ("add", _ADD),
                ("claim", _CLAIM),
                ("ack", _ACK),
                ("reschedule", _RESCHEDULE),
                ("bury", _BURY),
                ("release", _RELEASE),
                ("retry_dead", _RETRY_DEAD),
                ("prune", _PRUNE),
            )
        }
        import redis

        self._errors: tuple[type[BaseException], ...] = (redis.RedisError,)

    @classmethod
    def from_url(cls, url: str) -> RedisOutbox:
        """``redis://[:password@]host:port/db?prefix=...&retention=...`` (``rediss://`` for TLS).

        Query options not listed in :class:`OutboxOptions` (nor ``prefix``) go to redis-py.
        """
        try:
            import redis
        except ImportError as exc:
            raise ConfigurationError(
                "a redis:// outbox needs the redis package: pip install 'tracking_mw[redis]'"
            ) from exc
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = [(k, v) for k, v in query if k in _OURS]
        theirs = [(k, v) for k, v in query if k not in _OURS]
        options, extra = OutboxOptions.from_url("?" + urlencode(ours), allowed=("prefix",))
        keys = {k for k, _ in theirs}
        for key, value in theirs:
            if key in ("socket_timeout", "socket_connect_timeout"):
                # redis-py takes NaN or a negative number here and fails on each connect.
                try:
                    seconds = float(value)
                except ValueError:
                    seconds = math.nan
                if not (math.isfinite(seconds) and seconds > 0):
                    raise ConfigurationError(
                        f"TRACKING_OUTBOX option {key} must be a finite number of seconds > 0,"
                        f" not {value!r}"
                    )
        if "socket_timeout" not in keys:
            # track() must not hang on a dead server: fail fast and report on the receipt.
            theirs += [("socket_timeout", "2"), ("socket_connect_timeout", "1")]
        plain = urlunsplit(parts._replace(query=urlencode(theirs)))
        try:
            client = redis.Redis.from_url(plain)
        except (ValueError, redis.RedisError) as exc:
            raise ConfigurationError(f"TRACKING_OUTBOX is not a valid Redis URL: {exc}") from exc
        return cls(client, options, prefix=extra.get("prefix", "{tmw}"))

    def _run(self, name: str, args: Sequence[Any]) -> Any:
        try:
            return self._scripts[name](keys=[self.prefix + ":seq"], args=[self.prefix, *args])
        except self._errors as exc:
            raise OutboxError(f"redis outbox {name} failed: {type(exc).__name__}") from exc

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self._errors as exc:
            raise OutboxError(f"redis outbox read failed: {type(exc).__name__}") from exc

    def add(self, records: Sequence[NewRecord], now: float) -> list[bool]:
        args: list[Any] = [_num(now)]
        for r in records:
            texts = [r.platform, r.event_id, r.event_name, r.batch_key]
            if not all(t.isascii() for t in texts):
                # redis-py would fail to encode a lone surrogate: U+FFFD instead (see _json).
                texts = [clean_text(t) for t in texts]
            args += texts
            args += [_num(r.event_time), dumps(r.item)]
        return [bool(x) for x in self._run("add", args)]

    def claim(self, platform: str, limit: int, lease_seconds: float, now: float) -> list[Claimed]:
        token = new_token()
        flat = self._run(
            "claim", [platform, _num(now), _num(now + lease_seconds), int(limit), token]
        )
        out = []
        for i in range(0, len(flat), 8):
            rid, eid, name, key, etime, item, attempts, created = flat[i : i + 8]
            out.append(
                Claimed(
                    record_id=_s(rid),
                    platform=platform,
                    event_id=_s(eid),
                    event_name=_s(name),
                    batch_key=_s(key),
                    event_time=float(etime),
                    item=loads(item),
                    attempts=int(attempts),
                    created_at=float(created),
                    lease=token,
                )
            )
        return out

    def ack(
        self, records: Sequence[Claimed], now: float, status: int | None, response: str | None
    ) -> None:
        args: list[Any] = [_num(now), "" if status is None else str(status)]
        args.append(excerpt(response) or "")
        for c in records:
            args += [c.record_id, c.platform]
        self._run("ack", args)

    def reschedule(
        self,
        records: Sequence[tuple[Claimed, float]],
        now: float,
        error: str,
        status: int | None,
        response: str | None,
    ) -> None:
        args: list[Any] = [_num(now), error, "" if status is None else str(status)]
        args.append(excerpt(response) or "")
        for c, when in records:
            args += [c.record_id, c.platform, c.lease, _num(when)]
        self._run("reschedule", args)

    def bury(
        self,
        records: Sequence[Claimed],
        now: float,
        reason: str,
        status: int | None,
        response: str | None,
    ) -> None:
        args: list[Any] = [_num(now), reason, "" if status is None else str(status)]
        args.append(excerpt(response) or "")
        for c in records:
            args += [c.record_id, c.platform, c.lease]
        self._run("bury", args)

    def release(self, records: Sequence[Claimed], now: float) -> None:
        args: list[Any] = [_num(now)]
        for c in records:
            args += [c.record_id, c.platform, c.lease]
        self._run("release", args)

    def _views(self, ids: Sequence[str]) -> list[DeliveryView]:
        pipe = self.client.pipeline(transaction=False)
        for rid in ids:
            pipe.hgetall(f"{self.prefix}:r:{rid}")
        rows = self._call(pipe.execute)
        out = []
        for rid, h in zip(ids, rows, strict=True):
            v = _view(rid, h)
            if v is not None:
                out.append(v)
        return out

    def recent(self, limit: int = 100) -> list[DeliveryView]:
        top = int(self._call(self.client.get, f"{self.prefix}:seq") or 0)
        out: list[DeliveryView] = []
        # Ids are sequential; pruned ones are gone, so look a little further back if needed.
        while top > 0 and len(out) < limit:
            window = [str(i) for i in range(top, max(0, top - 2 * limit), -1)]
            out += self._views(window)
            top -= len(window)
        return out[:limit]

    def _platforms(self) -> list[str]:
        return sorted(_s(p) for p in self._call(self.client.smembers, f"{self.prefix}:platforms"))

    def dead_letters(self, limit: int = 100) -> list[DeliveryView]:
        ids: list[int] = []
        for platform in self._platforms():
            found = self._call(
                self.client.zrevrange, f"{self.prefix}:dead:{platform}", 0, limit - 1
            )
            ids += [int(x) for x in found]
        ids.sort(reverse=True)
        return self._views([str(i) for i in ids[:limit]])

    def retry_dead(self, record_ids: Sequence[str] | None, now: float) -> int:
        """Queue dead letters again, at most ``_BATCH`` per script call (see _BATCH)."""
        n = 0
        if record_ids is None:
            for platform in self._platforms():
                while True:
                    done, read = self._run("retry_dead", [_num(now), "*", platform, _BATCH])
                    n += int(done)
                    if int(read) < _BATCH:
                        break
            return n
        ids = [r for r in record_ids if r.isdigit()]
        for i in range(0, len(ids), _BATCH):
            n += int(self._run("retry_dead", [_num(now), *ids[i : i + _BATCH]])[0])
        return n

    def stats(self, now: float) -> dict[str, dict[str, float]]:
        platforms = self._platforms()
        pipe = self.client.pipeline(transaction=False)
        p = self.prefix
        for name in platforms:
            pipe.zcard(f"{p}:pend:{name}")
            pipe.scard(f"{p}:retry:{name}")
            pipe.zcard(f"{p}:done:{name}")
            pipe.zcard(f"{p}:dead:{name}")
            pipe.zrange(f"{p}:pend:{name}", 0, 0, withscores=True)
        res = self._call(pipe.execute)
        out: dict[str, dict[str, float]] = {}
        for i, name in enumerate(platforms):
            pend, retry, done, dead, oldest = res[5 * i : 5 * i + 5]
            s = empty_stats()
            s["pending"], s["retrying"], s[DELIVERED], s[DEAD] = pend, retry, done, dead
            if oldest:
                s["oldest_pending_age"] = max(0.0, now - float(oldest[0][1]))
            out[name] = s
        return out

    def link(self, key: str, snapshot: Mapping[str, Any], now: float) -> None:
        ttl_ms = max(1, math.ceil(self.options.link_ttl * 1000))
        try:
            self.client.set(f"{self.prefix}:link:{key}", dumps(dict(snapshot)), px=ttl_ms)
        except self._errors as exc:
            raise OutboxError(f"redis outbox link failed: {type(exc).__name__}") from exc

    def linked(self, key: str, now: float) -> dict[str, Any] | None:
        raw = self._call(self.client.get, f"{self.prefix}:link:{key}")
        if raw is None:
            return None
        found = loads(raw)
        return found if isinstance(found, dict) else None

    def prune(self, now: float) -> int:
        """Delete old delivered and dead records, ``_BATCH`` per script call, until a call
        finds fewer: all of them, however many, each call short (see _BATCH)."""
        args = [_num(now - self.options.retention), _num(now - self.options.dead_retention)]
        n = 0
        while True:
            done = int(self._run("prune", [*args, _BATCH]))
            n += done
            if done < _BATCH:
                return n

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()

    def __repr__(self) -> str:
        return f"RedisOutbox(prefix={self.prefix!r})"

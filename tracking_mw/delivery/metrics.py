"""Delivery counters, readable from Python and, with ``prometheus_client``, from Prometheus.

Counters (since the process started, per platform): ``accepted`` (records queued by
``track()``), ``delivered``, ``retried`` (tries rescheduled), ``dead``, ``failed`` (records
``track()`` could not queue because the outbox failed). Gauges read from the
outbox at collection time: ``pending`` and ``oldest_pending_age`` (seconds).

Prometheus: when ``prometheus_client`` is installed (``pip install tracking_mw[prometheus]``)
one collector is registered in its default registry the first time a runtime is created;
it reports every live runtime of the process as::

    tracking_mw_events_accepted_total{platform="meta"}
    tracking_mw_events_delivered_total{platform="meta"}
    tracking_mw_events_retried_total{platform="meta"}
    tracking_mw_events_dead_total{platform="meta"}
    tracking_mw_events_failed_total{platform="meta"}
    tracking_mw_events_pending{platform="meta"}
    tracking_mw_oldest_pending_age_seconds{platform="meta"}

Serve it the usual way (``prometheus_client.start_http_server`` or ``make_asgi_app``).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .._fork import fork_safe_rlock

__all__ = ["COUNTERS", "Metrics", "register_prometheus"]

log = logging.getLogger("tracking_mw")

COUNTERS = ("accepted", "delivered", "retried", "dead", "failed")


class Metrics:
    """Thread-safe per-platform counters."""

    def __init__(self) -> None:
        self._lock = fork_safe_rlock()
        self._counts: dict[str, dict[str, int]] = {}

    def add(self, platform: str, counter: str, n: int = 1) -> None:
        """Add ``n`` to one counter of one platform."""
        with self._lock:
            per = self._counts.get(platform)
            if per is None:
                per = self._counts[platform] = dict.fromkeys(COUNTERS, 0)
            per[counter] += n

    def add_each(self, platforms: Sequence[str], counter: str) -> None:
        """Add 1 to one counter of each of ``platforms`` (one lock round for all)."""
        with self._lock:
            counts = self._counts
            for platform in platforms:
                per = counts.get(platform)
                if per is None:
                    per = counts[platform] = dict.fromkeys(COUNTERS, 0)
                per[counter] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        """A copy of every counter."""
        with self._lock:
            return {p: dict(c) for p, c in self._counts.items()}


# Runtimes whose counters the Prometheus collector reports (weak: tests create many).
_sources: weakref.WeakSet[Any] = weakref.WeakSet()
_registered = False
_reg_lock = threading.Lock()


# What a runtime reads from its outbox rather than counts itself: several runtimes of one
# process over one outbox (configure() next to a middleware) report it once, not each.
_FROM_OUTBOX = frozenset({"pending", "oldest_pending_age", "dead_letters"})


def _outbox_key(rt: Any) -> object:
    url = str(getattr(getattr(rt, "settings", None), "outbox", "") or "")
    # Two memory:// outboxes are two stores; two runtimes on one file or server are one.
    return url if url and not url.startswith("memory:") else id(rt.outbox)


def _collect(sources: Iterable[Any]) -> dict[str, dict[str, float]]:
    total: dict[str, dict[str, float]] = {}
    outboxes: set[object] = set()
    for rt in list(sources):
        try:
            counters: dict[str, dict[str, float]] = rt.counters()
        except Exception as exc:  # a broken outbox must not break the scrape of others
            log.warning("tracking_mw: counters unavailable: %s", type(exc).__name__)
            continue
        key = _outbox_key(rt)
        counted = key in outboxes
        outboxes.add(key)
        for platform, values in counters.items():
            agg = total.setdefault(platform, {})
            for k, v in values.items():
                if counted and k in _FROM_OUTBOX:
                    continue
                if k == "oldest_pending_age":
                    agg[k] = max(agg.get(k, 0.0), v)
                else:
                    agg[k] = agg.get(k, 0.0) + v
    return total


def _make_collector(sources: Callable[[], Iterable[Any]]) -> Any:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Collector:
        def collect(self) -> Iterator[Any]:
            data = _collect(sources())
            fams: dict[str, Any] = {}
            for name in COUNTERS:
                fams[name] = CounterMetricFamily(
                    f"tracking_mw_events_{name}",
                    f"Delivery records {name} since the process started",
                    labels=["platform"],
                )
            pending = GaugeMetricFamily(
                "tracking_mw_events_pending",
                "Delivery records not yet delivered nor dead",
                labels=["platform"],
            )
            oldest = GaugeMetricFamily(
                "tracking_mw_oldest_pending_age_seconds",
                "Age of the oldest pending delivery record",
                labels=["platform"],
            )
            for platform, values in sorted(data.items()):
                for name in COUNTERS:
                    fams[name].add_metric([platform], values.get(name, 0.0))
                pending.add_metric([platform], values.get("pending", 0.0))
                oldest.add_metric([platform], values.get("oldest_pending_age", 0.0))
            yield from fams.values()
            yield pending
            yield oldest

        def describe(self) -> Iterator[Any]:
            return iter(())

    return Collector()


def register_prometheus(runtime: Any, registry: Any = None) -> bool:
    """Report ``runtime``'s counters to Prometheus; False when prometheus_client is missing.

    With ``registry=None`` every runtime shares one collector in the default registry.
    With an explicit registry, a collector of just this runtime is registered there.
    """
    global _registered
    try:
        import prometheus_client
    except ImportError:
        return False
    if registry is not None:
        registry.register(_make_collector(lambda: [runtime]))
        return True
    with _reg_lock:
        _sources.add(runtime)
        if not _registered:
            prometheus_client.REGISTRY.register(_make_collector(lambda: list(_sources)))
            _registered = True
    return True

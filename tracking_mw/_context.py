"""The current request's tracking state, in ContextVars so async and sync views both see it.

The middleware sets it before calling the app and resets it afterwards. Starlette runs sync
views in a worker thread with the context copied, so ``current_attribution()`` works there too.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from .attribution import Attribution

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["RequestState", "current_attribution", "current_state"]


class RequestState:
    """Per-request state the middleware shares with view code.

    ``attribution`` is the visitor's attribution as of this request, or ``None`` when the
    consent hook refused tracking (then ``consent`` is False and nothing may be sent);
    ``runtime`` owns the tracker and dispatcher of the middleware that handled the request.
    """

    __slots__ = ("_attribution", "_build", "_source", "consent", "runtime")

    def __init__(
        self,
        attribution: Attribution | None,
        runtime: Runtime | None = None,
        consent: bool = True,
    ) -> None:
        self._attribution = attribution
        # A deferred attribution: _build(_source), made on first use (see deferred_state).
        self._build: Callable[[Any], Attribution] | None = None
        self._source: Any = None
        self.runtime = runtime
        self.consent = consent

    @property
    def attribution(self) -> Attribution | None:
        """The attribution (see the class docstring); made now if it was deferred."""
        build = self._build
        if build is not None:
            # _source stays: a thread racing here may still be about to read it.
            self._attribution = build(self._source)
            self._build = None
        return self._attribution

    @attribution.setter
    def attribution(self, value: Attribution | None) -> None:
        self._attribution = value
        self._build = None

    def __repr__(self) -> str:
        return (
            f"RequestState(attribution={self.attribution!r}, runtime={self.runtime!r}, "
            f"consent={self.consent!r})"
        )


_new_state = object.__new__
_S = TypeVar("_S")


def deferred_state(
    build: Callable[[_S], Attribution], source: _S, runtime: Runtime | None
) -> RequestState:
    """A consenting visitor's state whose attribution ``build(source)`` makes on first use.

    Most pages never ask for the attribution: the client context (IP, cleaned user agent,
    URL) is then never assembled. ``build`` must not raise and must return equal values if
    two threads of one request race to call it. ``source`` is what the client context is
    read from (the request's parts, or a copy of its scope or environ): passed here rather
    than bound into ``build``, so a remembered ``build`` serves every request as it is.
    (Made without ``__init__``: every request.)
    """
    state: RequestState = _new_state(RequestState)
    state._attribution = None
    state._build = build
    state._source = source
    state.runtime = runtime
    state.consent = True
    return state


# What the glue sets for a returning visitor's page view: (build, source, runtime), the
# arguments of deferred_state. A tuple is made without a Python call, and most pages never
# read the state; the first reader in a context turns it into the RequestState.
Deferred = tuple[Callable[[Any], Attribution], Any, "Runtime | None"]

_state: ContextVar[RequestState | Deferred | None] = ContextVar("tracking_mw_state", default=None)


def current_state() -> RequestState | None:
    """The state of the request being handled, or None outside a tracked request."""
    st = _state.get()
    if isinstance(st, tuple):
        # Kept in this context (the glue's reset still restores what came before), so a
        # view asking twice gets one state and one attribution. A worker thread running a
        # sync view has a copy of the context and makes its own, equal, one.
        st = deferred_state(*st)
        _state.set(st)
    return st


def current_attribution() -> Attribution | None:
    """The current visitor's attribution, or ``None`` outside a tracked request.

    Also ``None`` when the consent hook refused tracking for this visitor.
    Store ``current_attribution().to_dict()`` with an order to attribute a payment that
    clears later (``track(..., attribution=snapshot)``).
    """
    st = current_state()
    return st.attribution if st is not None else None

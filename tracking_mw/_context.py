"""The current request's tracking state, in ContextVars so async and sync views both see it.

The middleware sets it before calling the app and resets it afterwards. Starlette runs sync
views in a worker thread with the context copied, so ``current_attribution()`` works there too.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .attribution import Attribution

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["RequestState", "current_attribution", "current_state"]


@dataclass(slots=True)
class RequestState:
    """Per-request state the middleware shares with view code.

    ``attribution`` is the visitor's attribution as of this request, or ``None`` when the
    consent hook refused tracking (then ``consent`` is False and nothing may be sent);
    ``runtime`` owns the tracker and dispatcher of the middleware that handled the request.
    """

    attribution: Attribution | None
    runtime: Runtime | None = None
    consent: bool = True


_state: ContextVar[RequestState | None] = ContextVar("tracking_mw_state", default=None)


def current_state() -> RequestState | None:
    """The state of the request being handled, or None outside a tracked request."""
    return _state.get()


def current_attribution() -> Attribution | None:
    """The current visitor's attribution, or ``None`` outside a tracked request.

    Also ``None`` when the consent hook refused tracking for this visitor.
    Store ``current_attribution().to_dict()`` with an order to attribute a payment that
    clears later (``track(..., attribution=snapshot)``).
    """
    st = _state.get()
    return st.attribution if st is not None else None

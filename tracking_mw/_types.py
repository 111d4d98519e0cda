"""Protocol-level type aliases shared by the ASGI and WSGI glue (no framework imports)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# The app an ASGI middleware wraps: any ASGI 3 callable, however its framework annotates the
# three arguments (Starlette: a MutableMapping scope; Django: a dict scope and Mapping
# messages). The middleware hands on what the server gave it.
ASGIApp = Callable[[Any, Any, Any], Awaitable[Any]]

WSGIEnviron = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

# A consent hook receives the ASGI scope or the WSGI environ and says whether to track.
ConsentHook = Callable[[MutableMapping[str, Any]], bool]

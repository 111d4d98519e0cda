"""Conversion events and the user data that comes with them.

An :class:`Event` uses the common vocabulary (``Purchase``, ``Lead``, ...; see
``tracking_mw.vocabulary``) or a platform's own name (``EVENT_LOAN_CREDIT``), which passes
through unchanged. Normalization and hashing per platform happen in the adapters.
"""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from ._errors import InvalidEvent

__all__ = ["Event", "UserData"]

_USER_FIELDS = (
    "email",
    "phone",
    "first_name",
    "last_name",
    "city",
    "state",
    "zip",
    "country",
    "external_id",
    "date_of_birth",
    "gender",
)


_USER_FIELD_SET = frozenset(_USER_FIELDS)


@dataclass(frozen=True, kw_only=True)
class UserData:
    """What the site knows about the person converting. Raw values; adapters normalize/hash."""

    email: str | None = None
    phone: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    city: str | None = None
    state: str | None = None
    zip: str | None = None
    country: str | None = None
    external_id: str | None = None
    date_of_birth: str | None = None
    gender: str | None = None

    def __post_init__(self) -> None:
        for name in _USER_FIELDS:
            v = getattr(self, name)
            if v is not None and v.__class__ is not str and not isinstance(v, str):
                if isinstance(v, int) and not isinstance(v, bool):
                    object.__setattr__(self, name, str(v))
                else:
                    raise InvalidEvent(f"user.{name} must be a string", field=f"user.{name}")

    @classmethod
    def coerce(cls, value: UserData | Mapping[str, Any] | None) -> UserData:
        """Accept a ``UserData``, a dict with its field names, or ``None``."""
        if value is None:
            return cls()
        if isinstance(value, UserData):
            return value
        if isinstance(value, Mapping):
            unknown = value.keys() - _USER_FIELD_SET
            if unknown:
                raise InvalidEvent(
                    f"unknown user field(s): {', '.join(sorted(map(str, unknown)))}",
                    field="user",
                )
            return cls(**{k: v for k, v in value.items() if v is not None and v != ""})
        raise InvalidEvent("user must be a dict or UserData", field="user")

    def to_dict(self) -> dict[str, str]:
        """Only the fields that are set."""
        return {f: getattr(self, f) for f in _USER_FIELDS if getattr(self, f) is not None}

    def __repr__(self) -> str:
        # Personal data never reaches a log through a repr.
        return f"UserData(<{len(self.to_dict())} fields>)"


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidEvent("value must be a number", field="value")
    try:
        d = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except (InvalidOperation, ValueError) as exc:
        raise InvalidEvent(f"value {value!r} is not a number", field="value") from exc
    if not d.is_finite() or d < 0:
        raise InvalidEvent("value must be a finite number >= 0", field="value")
    return d


@dataclass(frozen=True, kw_only=True)
class Event:
    """One conversion. ``event_id`` deduplicates it everywhere (defaults to a new UUID)."""

    name: str
    value: Decimal | None = None
    currency: str | None = None
    user: UserData = field(default_factory=UserData)
    contents: Sequence[Mapping[str, Any]] = ()
    properties: Mapping[str, Any] = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: Unix seconds; a ``datetime`` is accepted and converted (naive means UTC).
    event_time: float = field(default_factory=time.time)
    event_source_url: str | None = None

    def __post_init__(self) -> None:
        # Runs in every track() call: fields already in their final form are not set again.
        set_ = object.__setattr__
        name = self.name
        if not isinstance(name, str) or not name.strip():
            raise InvalidEvent("event name must be a non-empty string", field="name")
        stripped = name.strip()
        if stripped != name:
            set_(self, "name", stripped)
        if self.value is not None:
            set_(self, "value", _decimal(self.value))
        if self.currency is not None:
            cur = str(self.currency).strip().upper()
            if len(cur) != 3 or not cur.isalpha() or not cur.isascii():
                raise InvalidEvent(
                    f"currency {self.currency!r} is not an ISO 4217 code", field="currency"
                )
            set_(self, "currency", cur)
        if not isinstance(self.user, UserData):
            set_(self, "user", UserData.coerce(self.user))
        event_id = self.event_id
        if not isinstance(event_id, str) or not event_id.strip():
            raise InvalidEvent("event_id must be a non-empty string", field="event_id")
        if len(event_id) > 128:
            raise InvalidEvent("event_id is longer than 128 characters", field="event_id")
        when: Any = self.event_time
        if when.__class__ is float and when == when:
            pass  # the default (time.time()) and the common case
        elif isinstance(when, datetime.datetime):
            # A naive datetime is taken as UTC: servers and payment webhooks mostly log UTC.
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.UTC)
            set_(self, "event_time", when.timestamp())
        elif isinstance(when, bool) or not isinstance(when, (int, float)) or when != when:
            raise InvalidEvent("event_time must be Unix seconds or a datetime", field="event_time")
        else:
            set_(self, "event_time", float(when))
        if self.event_time > time.time() + 300:
            hint = " (milliseconds instead of seconds?)" if self.event_time > 1e11 else ""
            raise InvalidEvent(f"event_time is in the future{hint}", field="event_time")
        if self.event_time <= 0:
            raise InvalidEvent("event_time must be after 1970", field="event_time")
        if not isinstance(self.properties, Mapping):
            raise InvalidEvent("properties must be a dict", field="properties")
        # Shallow copies, so the caller changing its dicts later cannot change the event.
        set_(self, "properties", dict(self.properties))
        contents = self.contents
        if contents.__class__ is not tuple or contents:  # () is the default: nothing to do
            if isinstance(contents, (str, bytes)) or not all(
                isinstance(c, Mapping) for c in contents
            ):
                raise InvalidEvent("contents must be a list of dicts", field="contents")
            set_(self, "contents", tuple(dict(c) for c in contents))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (value as a string so no precision is lost)."""
        return {
            "name": self.name,
            "value": str(self.value) if self.value is not None else None,
            "currency": self.currency,
            "user": self.user.to_dict(),
            "contents": [dict(c) for c in self.contents],
            "properties": dict(self.properties),
            "event_id": self.event_id,
            "event_time": self.event_time,
            "event_source_url": self.event_source_url,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """Rebuild an event made by :meth:`to_dict`."""
        return cls(
            name=data["name"],
            value=data.get("value"),
            currency=data.get("currency"),
            user=UserData.coerce(data.get("user")),
            contents=data.get("contents") or (),
            properties=data.get("properties") or {},
            event_id=data["event_id"],
            event_time=data["event_time"],
            event_source_url=data.get("event_source_url"),
        )

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
from ._json import clean_text
from ._normalize import json_number

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
_NO_FIELDS: dict[str, str | None] = dict.fromkeys(_USER_FIELDS)


def _user_string(name: str, value: Any) -> str:
    """A user field's value as a string: str (subclasses too) or int; anything else is bad."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InvalidEvent(f"user.{name} must be a string", field=f"user.{name}")


@dataclass(frozen=True, kw_only=True, init=False)
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

    # Written out rather than generated: a frozen dataclass sets each field through
    # object.__setattr__, and every track() builds one of these.
    def __init__(
        self,
        *,
        email: str | None = None,
        phone: str | None = None,
        first_name: str | None = None,
        last_name: str | None = None,
        city: str | None = None,
        state: str | None = None,
        zip: str | None = None,
        country: str | None = None,
        external_id: str | None = None,
        date_of_birth: str | None = None,
        gender: str | None = None,
    ) -> None:
        values = {
            "email": email,
            "phone": phone,
            "first_name": first_name,
            "last_name": last_name,
            "city": city,
            "state": state,
            "zip": zip,
            "country": country,
            "external_id": external_id,
            "date_of_birth": date_of_birth,
            "gender": gender,
        }
        for name, v in values.items():
            if v is not None and v.__class__ is not str:
                values[name] = _user_string(name, v)
        self.__dict__.update(values)

    @classmethod
    def coerce(cls, value: UserData | Mapping[str, Any] | None) -> UserData:
        """Accept a ``UserData``, a dict with its field names, or ``None``."""
        if value is None:
            return cls()
        if isinstance(value, UserData):
            return value
        if value.__class__ is dict or isinstance(value, Mapping):  # the ABC check is slow
            unknown = value.keys() - _USER_FIELD_SET
            if unknown:
                raise InvalidEvent(
                    f"unknown user field(s): {', '.join(sorted(map(str, unknown)))}",
                    field="user",
                )
            if cls is not UserData:
                return cls(**{k: v for k, v in value.items() if v is not None and v != ""})
            # The common case (track(user={...})), without __init__'s keyword handling:
            # every field None, then the given ones checked and set.
            fields = _NO_FIELDS.copy()  # a copy is far cheaper than dict.fromkeys()
            for k, v in value.items():
                if v is None or v == "":
                    continue
                if v.__class__ is not str:
                    v = _user_string(k, v)
                fields[k] = v
            obj = object.__new__(cls)
            object.__setattr__(obj, "__dict__", fields)
            return obj
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
    # -0 (round(-0.004, 2) gives it) would be written "-0.00", which Bigo rejects.
    return d.copy_abs() if d.is_zero() else d


_NO_USER = UserData()
_UNSET: Any = object()


@dataclass(frozen=True, kw_only=True, init=False)
class Event:
    """One conversion. ``event_id`` (a new UUID by default) deduplicates it in the outbox, and
    at the platforms that take an event id: Meta (with the browser pixel's ``eventID``),
    TikTok, and Rokt (as ``confirmationref``). Kwai, Bigo and ROIBest take none.

    ``None`` for ``user``, ``properties``, ``event_id`` or ``event_time`` means the default
    (no user data, no properties, a new UUID, now).
    """

    name: str
    value: Decimal | None = None
    currency: str | None = None
    user: UserData = _NO_USER
    contents: Sequence[Mapping[str, Any]] = ()
    properties: Mapping[str, Any] = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: Unix seconds; a ``datetime`` is accepted and converted (naive means UTC).
    event_time: float = field(default_factory=time.time)
    event_source_url: str | None = None

    # Written out rather than generated (with a __post_init__): runs in every track() call,
    # and a frozen dataclass sets each field through object.__setattr__.
    def __init__(
        self,
        *,
        name: str,
        value: Decimal | float | int | str | None = None,
        currency: str | None = None,
        user: UserData | Mapping[str, Any] | None = None,
        contents: Sequence[Mapping[str, Any]] = (),
        properties: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        event_time: float | datetime.datetime | None = None,
        event_source_url: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise InvalidEvent("event name must be a non-empty string", field="name")
        # The outbox and the platforms get text UTF-8 can encode (a lone surrogate becomes
        # U+FFFD there): the event, and the receipt made from it, say the same.
        name = clean_text(name.strip())
        if value is not None:
            value = _decimal(value)
        if currency is not None:
            cur = str(currency).strip().upper()
            if len(cur) != 3 or not cur.isalpha() or not cur.isascii():
                raise InvalidEvent(
                    f"currency {currency!r} is not an ISO 4217 code", field="currency"
                )
            currency = cur
        if user is None:
            user = _NO_USER
        elif user.__class__ is not UserData:
            user = UserData.coerce(user)
        if event_id is None:
            event_id = str(uuid.uuid4())
        elif not isinstance(event_id, str) or not event_id.strip():
            raise InvalidEvent("event_id must be a non-empty string", field="event_id")
        elif len(event_id) > 128:
            raise InvalidEvent("event_id is longer than 128 characters", field="event_id")
        else:
            event_id = clean_text(event_id)
        now = time.time()
        when: Any = now if event_time is None else event_time
        if when.__class__ is not float or when != when:
            if isinstance(when, datetime.datetime):
                # A naive datetime is taken as UTC: servers and payment webhooks mostly log UTC.
                if when.tzinfo is None:
                    when = when.replace(tzinfo=datetime.UTC)
                when = when.timestamp()
            elif isinstance(when, bool) or not isinstance(when, (int, float)) or when != when:
                raise InvalidEvent(
                    "event_time must be Unix seconds or a datetime", field="event_time"
                )
            else:
                when = float(when)
        if when > now + 300:
            hint = " (milliseconds instead of seconds?)" if when > 1e11 else ""
            raise InvalidEvent(f"event_time is in the future{hint}", field="event_time")
        if when <= 0:
            raise InvalidEvent("event_time must be after 1970", field="event_time")
        if properties is None:
            properties = {}
        elif not isinstance(properties, Mapping):
            raise InvalidEvent("properties must be a dict", field="properties")
        else:
            # Shallow copies, so the caller changing its dicts later cannot change the event.
            properties = dict(properties)
        if contents.__class__ is not tuple or contents:  # () is the default: nothing to do
            if isinstance(contents, (str, bytes, Mapping)):
                raise InvalidEvent("contents must be a list of dicts", field="contents")
            try:
                # Drawn once: a generator or map() would be empty on a second pass.
                items = tuple(contents)
            except TypeError:
                raise InvalidEvent("contents must be a list of dicts", field="contents") from None
            if not all(isinstance(c, Mapping) for c in items):
                raise InvalidEvent("contents must be a list of dicts", field="contents")
            contents = tuple(dict(c) for c in items)
        self.__dict__.update(
            name=name,
            value=value,
            currency=currency,
            user=user,
            contents=contents,
            properties=properties,
            event_id=event_id,
            event_time=when,
            event_source_url=event_source_url,
        )

    @property
    def json_value(self) -> int | float | None:
        """``value`` as the JSON number platforms get (int when whole), computed once: every
        adapter that sends money asks for it."""
        cached = self.__dict__.get("_json_value", _UNSET)
        if cached is _UNSET:
            cached = None if self.value is None else json_number(self.value)
            self.__dict__["_json_value"] = cached
        return cached  # type: ignore[no-any-return]

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

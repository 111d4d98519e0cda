"""The public surface is exactly what __all__ says, and every name in it is documented."""

from __future__ import annotations

import inspect

import tracking_mw

EXPECTED = {
    "Attribution",
    "BigoConfig",
    "ClientContext",
    "ConfigurationError",
    "DeliveryConfig",
    "Event",
    "Inspector",
    "InvalidEvent",
    "KwaiConfig",
    "MetaConfig",
    "OutboxError",
    "Receipt",
    "RoibestConfig",
    "RoktConfig",
    "Runtime",
    "Secret",
    "Settings",
    "SettingsOverrides",
    "TiktokConfig",
    "Touch",
    "TrackingError",
    "TrackingMiddleware",
    "TrackingWSGIMiddleware",
    "UserData",
    "__version__",
    "configure",
    "current_attribution",
    "link_visitor",
    "track",
}


def test_all_is_the_public_api() -> None:
    assert set(tracking_mw.__all__) == EXPECTED
    assert len(tracking_mw.__all__) == len(set(tracking_mw.__all__))


def test_every_exported_name_exists_and_is_documented() -> None:
    for name in tracking_mw.__all__:
        obj = getattr(tracking_mw, name)
        if name == "__version__":
            assert isinstance(obj, str)
            continue
        assert inspect.getdoc(obj), f"{name} has no docstring"


def test_exported_members_come_from_private_or_documented_modules() -> None:
    for name in tracking_mw.__all__:
        if name == "__version__":
            continue
        module = getattr(tracking_mw, name).__module__
        assert module.startswith("tracking_mw."), (name, module)


def test_errors_share_one_root() -> None:
    for exc in (
        tracking_mw.ConfigurationError,
        tracking_mw.InvalidEvent,
        tracking_mw.OutboxError,
    ):
        assert issubclass(exc, tracking_mw.TrackingError)


def test_configure_sets_up_track_outside_a_request(tmp_path: object) -> None:
    from tracking_mw import Runtime, Settings, configure, track

    settings = Settings(
        secret_key="x" * 32,
        outbox="memory://",
        start_dispatcher=False,
        roibest=tracking_mw.RoibestConfig(),
    )
    try:
        runtime = configure(settings)
        assert Runtime.default() is runtime
        receipt = track(
            "Lead",
            attribution={
                "visitor_id": "v1",
                "touches": {"roibest": {"click_id": "4740128923061846"}},
            },
        )
        assert receipt.queued == ("roibest",)
        assert runtime.counters()["roibest"]["accepted"] == 1
        assert runtime.counters()["roibest"]["pending"] == 1
    finally:
        Runtime.set_default(None)

"""Claimed records keep the stored JSON text; the SQLite outbox checkpoints on request."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from tracking_mw.delivery import Claimed, NewRecord
from tracking_mw.delivery._base import dumps
from tracking_mw.delivery.memory import MemoryOutbox
from tracking_mw.delivery.sqlite import SQLiteOutbox

T0 = 1_700_000_000.0


def _claimed(**kw: object) -> Claimed:
    base: dict[str, object] = {
        "record_id": "1",
        "platform": "meta",
        "event_id": "e1",
        "event_name": "Purchase",
        "batch_key": "",
        "event_time": T0,
        "attempts": 0,
        "created_at": T0,
        "lease": "tok",
    }
    base.update(kw)
    return Claimed(**base)  # type: ignore[arg-type]


def test_item_from_text_is_parsed_once_and_kept() -> None:
    c = _claimed(item_json='{"a":"é","n":[1,2]}')
    assert c.item == {"a": "é", "n": [1, 2]}
    assert c.item is c.item
    assert c.item_json == '{"a":"é","n":[1,2]}'


def test_text_from_item_is_compact_json() -> None:
    c = _claimed(item={"a": "é", "n": [1, 2]})
    assert c.item_json == dumps({"a": "é", "n": [1, 2]}) == '{"a":"é","n":[1,2]}'


def test_needs_item_or_text() -> None:
    with pytest.raises(TypeError):
        _claimed()


def test_repr_shows_no_item() -> None:
    c = _claimed(item={"em": "secret-hash"})
    assert "secret-hash" not in repr(c)
    assert "e1" in repr(c)


def _rec(eid: str, item: dict[str, object]) -> NewRecord:
    return NewRecord("meta", eid, "Purchase", "px", T0, item)


def test_sqlite_claim_keeps_the_stored_text(tmp_path: Path) -> None:
    box = SQLiteOutbox(str(tmp_path / "o.sqlite3"))
    try:
        item = {"pixel_id": "px", "event": {"event_name": "Purchase", "v": 1.5, "t": "ã"}}
        assert box.add([_rec("e1", item)], T0) == [True]
        [c] = box.claim("meta", 10, 60.0, T0)
        assert c.item_json == dumps(item)
        assert c.item == item
        assert (c.event_id, c.batch_key, c.attempts) == ("e1", "px", 0)
    finally:
        box.close()


def test_memory_claim_gives_the_same_text() -> None:
    box = MemoryOutbox()
    item = {"pixel_id": "px", "event": {"event_name": "Purchase"}}
    box.add([_rec("e1", item)], T0)
    [c] = box.claim("meta", 10, 60.0, T0)
    assert c.item_json == dumps(item)


def _rows_in_main_file(path: Path, tmp_path: Path) -> int:
    """Events in the database file alone, without its WAL (a copy, opened read-only)."""
    copy = tmp_path / "copy.sqlite3"
    copy.write_bytes(path.read_bytes())
    conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchone() is None:
            return 0  # even the schema is still only in the WAL
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()
        copy.unlink()


def test_sqlite_checkpoint_copies_the_wal_into_the_file(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    box = SQLiteOutbox(str(path))
    try:
        box.add([_rec(f"e{i}", {"n": i}) for i in range(200)], T0)
        assert os.path.getsize(f"{path}-wal") > 0
        assert _rows_in_main_file(path, tmp_path) == 0  # committed, still only in the WAL
        box.checkpoint()
        assert _rows_in_main_file(path, tmp_path) == 200
        assert len(box.claim("meta", 500, 60.0, T0)) == 200
    finally:
        box.close()


def test_sqlite_writer_does_not_checkpoint_early(tmp_path: Path) -> None:
    box = SQLiteOutbox(str(tmp_path / "o.sqlite3"))
    try:
        box.add([_rec("e1", {"n": 1})], T0)
        pages = box._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert pages >= 4_000
    finally:
        box.close()


def test_memory_checkpoint_is_a_no_op() -> None:
    MemoryOutbox().checkpoint()


def test_sqlite_claim_keeps_floats_exact(tmp_path: Path) -> None:
    box = SQLiteOutbox(str(tmp_path / "o.sqlite3"))
    try:
        when, now = 1795613896.3182652, 1795613900.1234567
        box.add([NewRecord("meta", "e1", "Purchase", "px", when, {"n": 1})], now)
        [c] = box.claim("meta", 10, 60.0, now + 0.000123)
        assert (c.event_time, c.created_at) == (when, now)
    finally:
        box.close()


def test_sqlite_claim_reads_odd_items_row_by_row(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    box = SQLiteOutbox(str(path))
    try:
        box.add([_rec(f"e{i}", {"n": i}) for i in range(3)], T0)
        # A text holding the separator the one-row read uses (never written by dumps()).
        odd = '{"n":"a\x1eb"}'
        conn = sqlite3.connect(path)
        try:
            with conn:
                conn.execute(
                    "UPDATE events SET items = ?, heads = ? WHERE event_id = 'e1'",
                    (odd, json.dumps([["meta", "px", len(odd)]])),
                )
        finally:
            conn.close()
        claimed = box.claim("meta", 10, 60.0, T0)
        assert [c.event_id for c in claimed] == ["e0", "e1", "e2"]
        assert [c.item_json for c in claimed] == ['{"n":0}', odd, '{"n":2}']
    finally:
        box.close()


def test_equality_is_field_by_field() -> None:
    a = _claimed(item_json='{"a":1}')
    b = _claimed(item={"a": 1})
    assert a == b
    assert a != _claimed(item={"a": 2})
    assert a != _claimed(item={"a": 1}, lease="other")

"""The SQLite file as someone with the sqlite3 shell sees it: metrics are JSON text that SQL's JSON functions
read, in the readings table and in the latest table, and a rewrite keeps them so."""

import sqlite3
from pathlib import Path

from fleetflow.writer.stores import open_store
from tests.stores.conftest import pipeline
from tests.stores.test_contract import batch


async def test_metrics_are_json_text_that_sql_reads(tmp_path: Path) -> None:
    store = open_store(pipeline("sqlite", tmp_path), None)
    await store.open()
    try:
        await store.write_readings([batch("f1", "d1", range(1, 4)), batch("f1", "d2", range(7, 9))])
        await store.write_readings([batch("f1", "d1", range(3, 5), value=10.0)])  # rewrites seq 3
    finally:
        await store.close()

    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        readings = db.execute("SELECT device, seq, typeof(metrics), json_extract(metrics, '$.temp'), "
                              "json_extract(metrics, '$.rh') FROM readings ORDER BY device, seq").fetchall()  # fmt: skip
        latest = db.execute("SELECT device, seq, typeof(metrics), json_extract(metrics, '$.temp') "
                            "FROM device_latest ORDER BY device").fetchall()  # fmt: skip

    assert readings == [
        ("d1", 1, "text", 2.0, 40.0),
        ("d1", 2, "text", 3.0, 40.0),
        ("d1", 3, "text", 13.0, 40.0),
        ("d1", 4, "text", 14.0, 40.0),
        ("d2", 7, "text", 8.0, 40.0),
        ("d2", 8, "text", 9.0, 40.0),
    ]
    assert latest == [("d1", 4, "text", 14.0), ("d2", 8, "text", 9.0)]

"""The results store: one SQLite file, one row per grid cell, every write a transaction.

A cell is `pending` until a worker takes it (`running`), then `done` or `failed`. A bench process
that is killed leaves its cell `running`; the next run of the grid treats anything but `done` as
still to do, so a crash loses at most the cell that was in flight.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .grid import Cell

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,          -- the config hash of the cell
    status TEXT NOT NULL,          -- pending | running | done | failed
    model TEXT, task TEXT, shots INTEGER, seed INTEGER, method TEXT, label TEXT,
    config TEXT NOT NULL,          -- the whole cell as JSON
    attempts INTEGER NOT NULL DEFAULT 0,
    accuracy REAL, macro_f1 REAL, dev_accuracy REAL, eval_size INTEGER,
    metrics TEXT,                  -- every metric as JSON
    trainable_parameters INTEGER,
    wall_seconds REAL,
    queries INTEGER, llm_calls INTEGER,
    artifact TEXT, versions TEXT, error TEXT, worker TEXT,
    started REAL, finished REAL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
RESULT_FIELDS = ("accuracy", "macro_f1", "dev_accuracy", "eval_size", "trainable_parameters", "wall_seconds",
                 "queries", "llm_calls", "artifact", "worker")


class ResultStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def add_cells(self, cells: list[Cell]) -> None:
        with self._transaction() as db:
            for c in cells:
                db.execute(
                    "INSERT OR IGNORE INTO runs (key, status, model, task, shots, seed, method, label, config) "
                    "VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?)",
                    (c.key, c.model, c.task, c.shots, c.seed, c.method.name, c.method.label,
                     json.dumps(c.config, sort_keys=True)),
                )

    def status(self, key: str) -> str | None:
        row = self._conn.execute("SELECT status FROM runs WHERE key = ?", (key,)).fetchone()
        return row["status"] if row else None

    def start(self, key: str, worker: str = "") -> int:
        """Mark a cell running and count the attempt; returns the attempt number (1-based)."""
        with self._transaction() as db:
            db.execute("UPDATE runs SET status='running', attempts=attempts+1, started=?, worker=?, error=NULL "
                       "WHERE key=?", (time.time(), worker, key))
            return db.execute("SELECT attempts FROM runs WHERE key=?", (key,)).fetchone()[0]

    def finish(self, key: str, result: dict[str, Any]) -> None:
        values = [result.get(f) for f in RESULT_FIELDS]
        with self._transaction() as db:
            db.execute(
                f"UPDATE runs SET status='done', {', '.join(f'{f}=?' for f in RESULT_FIELDS)}, metrics=?, "
                "versions=?, finished=?, error=NULL WHERE key=?",
                (*values, json.dumps(result.get("metrics", {})), json.dumps(result.get("versions", {})),
                 time.time(), key),
            )

    def fail(self, key: str, error: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE runs SET status='failed', error=?, finished=? WHERE key=?", (error, time.time(), key))

    def rows(self, status: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM runs" + (" WHERE status = ?" if status else "") + " ORDER BY rowid"
        out = []
        for row in self._conn.execute(query, (status,) if status else ()):
            d = dict(row)
            for k in ("config", "metrics", "versions"):
                d[k] = json.loads(d[k]) if d.get(k) else {}
            out.append(d)
        return out

    def set_meta(self, key: str, value: Any) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row["value"]) if row else default

    def close(self) -> None:
        self._conn.close()

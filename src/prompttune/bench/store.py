"""The results store: one SQLite file, one row per grid cell, every write a transaction.

A cell is `pending` until a bench process claims it (`running`), then `done` or `failed`. A claim
is one transaction and names its owner (host:pid:uuid); the owner's `Heartbeat` stamps its running
cells every few seconds. Several bench processes can share one database: each runs only the cells it
claimed, and takes over a claim whose owner is gone (its heartbeat older than `stale_after`, or its
pid dead on this host), so a killed bench loses at most the cells that were in flight.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
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
    metric TEXT,                   -- the run's primary metric: accuracy, hm (base-to-new), exact_match, f1, ...
    accuracy REAL, macro_f1 REAL, dev_accuracy REAL, eval_size INTEGER,  -- accuracy, dev_accuracy: `metric`'s value
    metrics TEXT,                  -- every metric as JSON
    trainable_parameters INTEGER,
    wall_seconds REAL,
    queries INTEGER, llm_calls INTEGER,  -- the budget spent: forward passes (searches), optimiser-LLM calls
    llm_tokens INTEGER,            -- and the optimiser LLM's tokens (prompt + completion)
    artifact TEXT, versions TEXT, error TEXT, worker TEXT,
    started REAL, finished REAL,
    owner TEXT,                    -- host:pid:uuid of the bench process holding a running cell
    heartbeat REAL                 -- when that owner last said it is alive
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
RESULT_FIELDS = ("metric", "accuracy", "macro_f1", "dev_accuracy", "eval_size", "trainable_parameters",
                 "wall_seconds", "queries", "llm_calls", "llm_tokens", "artifact", "worker")
# added to databases written before they existed: claims (owner, heartbeat), the primary metric's name (metric),
# the optimiser LLM's tokens (llm_tokens)
ADDED_COLUMNS = {"owner": "TEXT", "heartbeat": "REAL", "metric": "TEXT", "llm_tokens": "INTEGER"}


def new_owner() -> str:
    """This bench process's name in claims: host, pid (to see on this host that it is gone) and a uuid."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _owner_gone(owner: str) -> bool:
    """True when `owner` ran on this host and its process no longer exists."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def claimable(row: sqlite3.Row, owner: str, since: float, stale_after: float, now: float) -> bool:
    """May `owner` (a bench that started at `since`) run this cell now?

    pending: yes. failed: only when it failed before this bench started (an earlier run's failure is
    retried; one that another bench recorded meanwhile is not). running: when we hold it ourselves
    (a retry), or its owner is gone: no heartbeat for `stale_after` seconds, or a dead pid here."""
    status = row["status"]
    if status == "pending":
        return True
    if status == "failed":
        return row["finished"] is None or row["finished"] < since
    if status != "running":
        return False
    if row["owner"] == owner:
        return True
    if not row["owner"] or row["heartbeat"] is None or now - row["heartbeat"] > stale_after:
        return True
    return _owner_gone(row["owner"])


def _legacy_metric(metrics: str | None) -> str:
    """The primary metric of a row stored before the `metric` column: hm when it scored base and new classes."""
    recorded = json.loads(metrics) if metrics else {}
    scored = recorded.get("eval") or recorded.get("dev") or {}
    return "hm" if isinstance(scored, dict) and "hm" in scored else "accuracy"


class ResultStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a database written by an older prompttune to today's columns. Finished rows from before
        `metric` existed get the name of the figure they stored: the harmonic mean for a base-to-new image
        task (its held-out metrics have `hm`), accuracy for everything else (all such runs classified)."""
        have = {r["name"] for r in self._conn.execute("PRAGMA table_info(runs)")}
        if have >= ADDED_COLUMNS.keys():
            return
        with self._transaction() as db:  # two processes may both get here: look again under the lock
            have = {r["name"] for r in db.execute("PRAGMA table_info(runs)")}
            for name, kind in ADDED_COLUMNS.items():
                if name not in have:
                    db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
            if "metric" not in have:
                for key, metrics in db.execute("SELECT key, metrics FROM runs WHERE status='done'").fetchall():
                    db.execute("UPDATE runs SET metric=? WHERE key=?", (_legacy_metric(metrics), key))

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

    def claim(self, key: str, owner: str, worker: str = "", since: float = float("inf"),
              stale_after: float = 60.0) -> int | None:
        """Mark the cell running for `owner` and count the attempt, in one transaction, if `claimable`;
        returns the attempt number (1-based), or None when another live bench holds it or it is finished."""
        with self._transaction() as db:
            row = db.execute("SELECT status, owner, heartbeat, finished, attempts FROM runs WHERE key=?",
                             (key,)).fetchone()
            now = time.time()
            if row is None or not claimable(row, owner, since, stale_after, now):
                return None
            db.execute("UPDATE runs SET status='running', attempts=attempts+1, started=?, heartbeat=?, owner=?, "
                       "worker=?, error=NULL WHERE key=?", (now, now, owner, worker, key))
            return row["attempts"] + 1

    def holder(self, key: str) -> str | None:
        row = self._conn.execute("SELECT owner FROM runs WHERE key = ?", (key,)).fetchone()
        return row["owner"] if row else None

    def finish(self, key: str, result: dict[str, Any], owner: str | None = None) -> bool:
        """Record a finished cell; with `owner`, only while that owner still holds it (False: the claim was
        taken over meanwhile, and the bench that took it records its own result)."""
        values = [result.get(f) for f in RESULT_FIELDS]
        with self._transaction() as db:
            cur = db.execute(
                f"UPDATE runs SET status='done', {', '.join(f'{f}=?' for f in RESULT_FIELDS)}, metrics=?, "
                "versions=?, finished=?, error=NULL WHERE key=? AND (? IS NULL OR owner=?)",
                (*values, json.dumps(result.get("metrics", {})), json.dumps(result.get("versions", {})),
                 time.time(), key, owner, owner),
            )
            return cur.rowcount > 0

    def fail(self, key: str, error: str, owner: str | None = None) -> bool:
        with self._transaction() as db:
            cur = db.execute("UPDATE runs SET status='failed', error=?, finished=? WHERE key=? AND "
                             "(? IS NULL OR owner=?)", (error, time.time(), key, owner, owner))
            return cur.rowcount > 0

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


class Heartbeat:
    """Keeps `owner`'s running cells fresh: a daemon thread with its own connection stamps them every
    `interval` seconds, so other benches see the owner alive while a long cell trains."""

    def __init__(self, path: str | Path, owner: str, interval: float = 10.0):
        self.path, self.owner, self.interval = str(path), owner, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="bench-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 60)

    def _beat(self) -> None:
        conn = sqlite3.connect(self.path, timeout=max(1.0, self.interval), isolation_level=None)
        try:
            while not self._stop.wait(self.interval):
                try:
                    conn.execute("UPDATE runs SET heartbeat=? WHERE owner=? AND status='running'",
                                 (time.time(), self.owner))
                except sqlite3.Error:  # busy for a moment: the next beat tries again (stale_after spans several)
                    continue
        finally:
            conn.close()

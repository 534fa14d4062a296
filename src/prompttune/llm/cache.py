"""A persistent response cache in SQLite, keyed by request: a rerun of the same optimisation costs
no LLM calls. Safe across threads (one lock) and processes (SQLite's own locking, WAL journal)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from .base import Completion


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, backend TEXT, request TEXT, "
                "response TEXT, created REAL)"
            )

    def get(self, key: str) -> Completion | None:
        with self._lock:
            row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        data = json.loads(row[0])
        return Completion(data["texts"], data["prompt_tokens"], data["completion_tokens"], attempts=0, cached=True)

    def put(self, key: str, backend: str, request: dict, completion: Completion) -> None:
        response = {"texts": completion.texts, "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens}
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, backend, request, response, created) VALUES (?, ?, ?, ?, ?)",
                (key, backend, json.dumps(request), json.dumps(response), time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

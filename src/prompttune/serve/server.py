"""The uvicorn server around the app, with every connection-level wait bounded.

* `timeout_keep_alive`: an idle kept-alive connection is closed after a few seconds;
* a request head (line and headers) must arrive within `header_timeout` of the connection opening or
  of its previous response (`_BoundedH11`; uvicorn itself waits for ever), and h11 bounds its size;
* the body must arrive within `--body-timeout` (`guard.RequestGuard`);
* on SIGTERM/SIGINT the engine closes first: queued requests answer 503 at once and generation stops
  at its next token, so no request holds the shutdown up; `timeout_graceful_shutdown` is the backstop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

KEEP_ALIVE_S = 5
GRACEFUL_SHUTDOWN_S = 10
MAX_HEAD_BYTES = 16 * 1024


class _BoundedH11(H11Protocol):
    """uvicorn's h11 protocol; a connection that does not complete a request head within
    `header_timeout` seconds (after opening, or after its last response) is closed."""

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        old = getattr(self, "_head_timer", None)
        if old is not None:
            old.cancel()
        def expire() -> None:  # only between requests: a pipelined request in flight is not cut off
            between = self.cycle is None or self.cycle.response_complete
            if between and not self.transport.is_closing():
                self.transport.close()

        self._head_timer = self.loop.call_later(self.header_timeout, expire)


class _Server(uvicorn.Server):
    """Closes the engine before uvicorn waits for the open requests to finish."""

    engine: Any = None

    async def shutdown(self, sockets=None) -> None:
        if self.engine is not None:
            self.engine.begin_close()
        await super().shutdown(sockets)
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close, 5.0)


def make_server(app, engine, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning",
                header_timeout: float = 10.0) -> uvicorn.Server:
    """A uvicorn server for `app` (from `create_app`) with the bounds above; `run()` it, or set
    `should_exit` to stop it."""
    protocol = type("BoundedH11", (_BoundedH11,), {"header_timeout": header_timeout})
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol, lifespan="off",
                            timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                            h11_max_incomplete_event_size=MAX_HEAD_BYTES)
    server = _Server(config)
    server.engine = engine
    return server

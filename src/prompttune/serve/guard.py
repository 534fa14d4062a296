"""What every request passes before the routes: the API key, and a body that is small enough and arrives
in time. An ASGI middleware (not `BaseHTTPMiddleware`), so that it can bound how long receiving the body
takes: uvicorn has no body-read timeout, and a client that sends half a body would otherwise hold its
connection and a task open for ever. The whole body is read here, then replayed to the app.

Errors are the API's own shape, `{"error": {"message", "type", "code", "param"}}`; those sent before
the body was read completely also close the connection.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any


def error_body(message: str, code: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}


def bearer_matches(header: str, key: str) -> bool:
    """`Authorization: Bearer KEY`, the scheme in any case (RFC 9110: schemes are case-insensitive)."""
    scheme, _, token = header.strip().partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), key.encode())


class RequestGuard:
    """Checks the API key (not on /health), reads the body within `body_timeout` seconds and at most
    `max_body_bytes` bytes, and hands the app the body in one message."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, body_timeout: float):
        self.app, self.api_key = app, api_key
        self.max_body_bytes, self.body_timeout = max_body_bytes, body_timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key and scope["path"] != "/health" and not bearer_matches(headers.get("authorization", ""),
                                                                               self.api_key):
            await _reply(send, 401, error_body("missing or wrong API key (send 'Authorization: Bearer <key>')",
                                               "invalid_api_key", "authentication_error"), close=True)
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await _reply(send, 413, error_body(f"request body is {int(length):,} bytes; the limit is "
                                               f"{self.max_body_bytes:,} (--max-body-bytes)", "body_too_large"),
                         close=True)
            return
        body = bytearray()
        deadline = time.monotonic() + self.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                await _reply(send, 408, error_body(f"the request body did not arrive within {self.body_timeout:g} s "
                                                   "(--body-timeout)", "body_timeout"), close=True)
                return
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await _reply(send, 413, error_body(f"request body exceeds the limit of {self.max_body_bytes:,} bytes "
                                                   "(--max-body-bytes)", "body_too_large"), close=True)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: waits for the client to go away

        await self.app(scope, replay, send)


async def _reply(send, status: int, payload: dict[str, Any], close: bool = False) -> None:
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})

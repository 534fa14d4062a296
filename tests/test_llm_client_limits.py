"""The LLM client against a real OpenAI-compatible HTTP server on loopback that answers fewer choices than
asked: every HTTP request is a call of the budget and a ledger entry, top-ups are bounded, and credentials in
the base URL never reach the ledger, the cache or an error message."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("openai")

from prompttune.llm import ChatRequest, LLMBudgetExhausted, LLMError, make_llm  # noqa: E402
from prompttune.llm.client import MAX_TOP_UPS  # noqa: E402


class _ShortServer(ThreadingHTTPServer):
    """Answers /chat/completions with at most `max_choices` choices whatever `n` asks; counts every request."""

    daemon_threads = True

    def __init__(self, max_choices: int):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.max_choices = max_choices
        self.requests: list[dict] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _ShortServer

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append({"path": self.path, "n": body.get("n", 1), "seed": body.get("seed"),
                                         "authorization": self.headers.get("Authorization", "")})
            overflow = len(self.server.requests) > 50  # a client that never stops: fail it rather than hang
        if overflow:
            return self._send(500, {"error": {"message": "too many requests", "type": "test", "code": None}})
        n = min(body.get("n", 1), self.server.max_choices)
        choices = [{"index": i, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": f"answer {body.get('seed')}/{i}"}} for i in range(n)]
        self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 2 * n,
                                                       "total_tokens": 5 + 2 * n}})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _serve(max_choices: int) -> Iterator[_ShortServer]:
    server = _ShortServer(max_choices)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def one_choice() -> Iterator[_ShortServer]:
    yield from _serve(1)


@pytest.fixture
def no_choice() -> Iterator[_ShortServer]:
    yield from _serve(0)


def _llm(server: _ShortServer, tmp_path, **kw):
    return make_llm("m", base_url=f"http://127.0.0.1:{server.server_port}/v1", cache=kw.pop("cache", None),
                    max_retries=0, timeout=30, **kw)


def test_a_short_server_gets_bounded_top_ups_each_a_call_of_the_budget(one_choice, tmp_path):
    llm = _llm(one_choice, tmp_path, max_calls=5, cache=tmp_path / "c.sqlite", ledger_path=tmp_path / "ledger.jsonl")
    texts = first = llm.chat("Rewrite this.", n=4, seed=7)
    calls = 1 + MAX_TOP_UPS
    assert len(one_choice.requests) == llm.calls == calls  # every HTTP request is in the ledger and the budget
    assert len(texts) == calls and len(set(texts)) == calls  # the completions there are, each a different sample
    assert [r["n"] for r in one_choice.requests] == [4, 3, 2]  # each top-up asks only for what is missing
    assert all(0 <= r["seed"] < 2**31 for r in one_choice.requests)
    assert (tmp_path / "ledger.jsonl").read_text().count("\n") == calls
    assert [e["choices"] for e in llm.ledger] == [1, 1, 1]

    # the budget stops the top-ups too: 5 calls allowed, 3 spent, one request of n=4 pays for 2 more
    texts = llm.chat("Another one.", n=4, seed=8)
    assert len(texts) == 2 and len(one_choice.requests) == llm.calls == 5 and llm.exhausted
    with pytest.raises(LLMBudgetExhausted, match="LLM budget spent"):
        llm.chat("A third.", n=1)
    assert len(one_choice.requests) == 5

    # a rerun on the cache takes the same path, top-ups included, with no HTTP request
    again = _llm(one_choice, tmp_path, max_calls=5, cache=tmp_path / "c.sqlite")
    assert again.chat("Rewrite this.", n=4, seed=7) == first and again.calls == calls
    assert len(one_choice.requests) == 5 and again.summary()["new_calls"] == 0


def test_concurrent_requests_share_one_budget(one_choice, tmp_path):
    llm = _llm(one_choice, tmp_path, max_calls=6, max_concurrency=4)
    requests = [ChatRequest.of(f"prompt {i}", n=3, seed=i) for i in range(4)]
    answers = llm.chat_many(requests)
    assert len(answers) == 4 and all(1 <= len(a.texts) <= 3 for a in answers)
    assert len(one_choice.requests) == llm.calls == 6 and llm.exhausted


def test_a_server_with_no_choices_is_a_clear_error_after_a_bounded_number_of_calls(no_choice, tmp_path):
    llm = _llm(no_choice, tmp_path, max_calls=100)
    with pytest.raises(LLMError, match="answered no completion"):
        llm.chat("Rewrite this.", n=1)
    assert len(no_choice.requests) == llm.calls <= 1 + MAX_TOP_UPS


def test_credentials_in_the_base_url_reach_neither_ledger_nor_cache(one_choice, tmp_path):
    port = one_choice.server_port
    url = f"http://alice:s3cret-pw@127.0.0.1:{port}/v1?api_key=TOPSECRET&api-version=2024-06"
    llm = make_llm("m", base_url=url, cache=tmp_path / "c.sqlite", ledger_path=tmp_path / "ledger.jsonl",
                   max_retries=0, timeout=30)
    llm.chat("Rewrite this.", n=1)
    assert one_choice.requests, "the request did not reach the server"
    assert llm.backend.backend_id == f"openai:http://127.0.0.1:{port}/v1?api-version=2024-06:m"
    plain = make_llm("m", base_url=f"http://127.0.0.1:{port}/v1?api-version=2024-06", cache=None)
    assert plain.backend.backend_id == llm.backend.backend_id  # so the cache key is the same without the secrets
    written = json.dumps(llm.ledger) + json.dumps(llm.summary()) + (tmp_path / "ledger.jsonl").read_text()
    written += "".join(p.read_bytes().decode("latin-1") for p in tmp_path.glob("c.sqlite*"))
    for secret in ("s3cret-pw", "TOPSECRET", "alice"):
        assert secret not in written

    dead = make_llm("m", base_url="http://bob:hunter2@127.0.0.1:9/v1?token=XYZ", cache=None, max_retries=0,
                    timeout=5)
    with pytest.raises(LLMError) as err:
        dead.chat("hello")
    assert "cannot reach" in str(err.value) and "hunter2" not in str(err.value) and "XYZ" not in str(err.value)
    assert "hunter2" not in json.dumps(dead.ledger) and "XYZ" not in json.dumps(dead.ledger)

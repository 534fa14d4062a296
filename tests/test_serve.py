"""`prompttune serve` through the official openai client: models, completions, chat, streaming,
classify, auth, bad requests, a bounded loopback load test, and the LLM client's failure handling
(a dead endpoint, an endpoint that answers 500 then 200)."""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
import torch

import prompttune
from helpers import free_port, uvicorn_in_thread
from prompttune.api import load, serving_engine
from prompttune.errors import ModelError
from prompttune.llm import LLMError, make_llm
from prompttune.serve import create_app

KEY = "test-key"


@pytest.fixture(scope="module")
def artifacts(backbone, data_dir, tmp_path_factory):
    """Three small real artifacts: a soft prompt (SST-2), a hard prompt (SST-2), zero-shot TREC."""
    root = tmp_path_factory.mktemp("serve")
    common = {"shots": 2, "seed": 0, "eval_split": "test", "eval_limit": 8, "progress": False}
    prompttune.train("prompt-tuning", backbone, "sst2", data_dir, out=root / "soft", steps=2, n_tokens=4, **common)
    candidates = ["{sentence}\nDid the reviewer like the movie? Answer:", "Review: {sentence}\nSentiment:"]
    prompttune.train("select", backbone, "sst2", data_dir, out=root / "hard", candidates=candidates, **common)
    prompttune.train("zero-shot", backbone, "trec", data_dir, out=root / "trec", **common)
    return root


@pytest.fixture(scope="module")
def server(backbone, artifacts):
    specs = [f"{n}={artifacts / n}" for n in ("soft", "hard", "trec")]
    engine = serving_engine(specs, backbone, max_batch=64)
    app = create_app(engine, api_key=KEY, max_body_bytes=20_000, max_tokens_limit=64)
    with uvicorn_in_thread(app) as url:
        yield {"url": url, "engine": engine}
    engine.close()


def post(url: str, body: bytes | dict, key: str | None = KEY) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_openai_client_lists_completes_chats_streams_and_classifies(server, backbone, artifacts):
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0)
    names = {m.id for m in client.models.list().data}
    assert names == {"smollm2-135m", "soft", "hard", "trec"}

    # the text goes through the artifact's template once, its soft prompt in place
    done = client.completions.create(model="soft", prompt="a gripping, beautifully acted film", max_tokens=8,
                                     temperature=0)
    soft = load(artifacts / "soft", model=backbone)
    assert done.choices[0].text == soft.generate("a gripping, beautifully acted film", max_new_tokens=8)
    raw = client.completions.create(model="soft", prompt="The capital of France is", max_tokens=8, temperature=0,
                                    extra_body={"raw": True})
    assert raw.choices[0].text == soft.generate("The capital of France is", max_new_tokens=8, raw=True)
    assert done.usage.completion_tokens > 0

    messages = [{"role": "user", "content": "Name a colour."}]
    chat = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=8, temperature=0)
    text = chat.choices[0].message.content
    assert text.strip()
    stream = client.chat.completions.create(model="smollm2-135m", messages=messages, max_tokens=8, temperature=0,
                                            stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces).strip() == text.strip()

    status, body = post(server["url"] + "/v1/classify", {"model": "hard", "input": ["a masterpiece", "dull, dull"]})
    assert status == 200 and [d["label"] for d in body["data"]] == load(artifacts / "hard", model=backbone).predict(
        ["a masterpiece", "dull, dull"])
    assert all(abs(sum(d["scores"].values()) - 1) < 1e-4 for d in body["data"])

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server["url"] + "/v1", api_key="wrong", max_retries=0).models.list()
    assert post(server["url"] + "/v1/classify", {"model": "hard", "input": ["x"]}, key=None)[0] == 401


def test_different_prompts_in_one_forward_pass_score_as_each_alone(server, backbone, artifacts):
    """Rows for three artifacts (two tasks, soft and text prompts) batched together give each
    artifact's own scores."""
    engine = server["engine"]
    texts = {"soft": ["an utter delight", "tedious and overlong"], "hard": ["a fine film", "a mess"],
             "trec": ["Who wrote Hamlet?", "How far is the moon?"]}
    passes = engine.stats["forward_passes"]
    # queued while the queue's lock is held, so the worker takes all three as one batch however loaded the
    # machine is (the 2 ms batch window alone could expire between them on a busy CPU)
    with engine.queue._cond:
        futures = {n: engine.classify(n, t) for n, t in texts.items()}
    for name, fut in futures.items():
        mine = torch.tensor([[s[lab] for lab in load(artifacts / name, model=backbone).labels]
                             for _, s in fut.result(timeout=60)])
        alone = load(artifacts / name, model=backbone).scores(texts[name]).exp()
        assert torch.allclose(mine, alone, atol=1e-3), name
    assert engine.stats["forward_passes"] - passes == 1


def test_fifty_concurrent_clients_mixing_three_artifacts(server, record_property):
    url = server["url"] + "/v1/classify"
    names = ["soft", "hard", "trec"]
    inputs = {"soft": "a warm, funny film", "hard": "boring and predictable", "trec": "Where is Lima?"}

    def one(i: int) -> tuple[int, float]:
        start = time.perf_counter()
        status, _ = post(url, {"model": names[i % 3], "input": [inputs[names[i % 3]]] * 2})
        return status, time.perf_counter() - start

    batches = server["engine"].stats["batches"]
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    latencies = sorted(t for _, t in results)
    errors = sum(s != 200 for s, _ in results)
    p50, p95 = statistics.median(latencies) * 1000, latencies[int(0.95 * len(latencies)) - 1] * 1000
    record_property("figure", f"serve, 50 concurrent clients x 3 artifacts: errors={errors} p50_ms={p50:.0f} "
                    f"p95_ms={p95:.0f} batches={server['engine'].stats['batches'] - batches}")
    assert errors == 0
    assert server["engine"].stats["batches"] - batches < 50  # requests were batched together


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"model": "hard", "input": ["x"', 400, "invalid_json"),
        ({"model": "nope", "input": ["x"]}, 404, "model_not_found"),
        ({"model": "hard", "input": ["x" * 30_000]}, 413, "body_too_large"),
        ({"model": "hard"}, 400, "invalid_body"),
        ({"model": "hard", "input": []}, 400, "invalid_body"),
    ],
)
def test_bad_requests_get_clear_json_errors(server, body, status, code):
    got, answer = post(server["url"] + "/v1/classify", body)
    assert got == status and answer["error"]["code"] == code and answer["error"]["message"]


def test_max_tokens_over_the_limit_and_health(server):
    got, answer = post(server["url"] + "/v1/completions", {"model": "soft", "prompt": "hi", "max_tokens": 1000})
    assert got == 400 and "limit of 64" in answer["error"]["message"]
    with urllib.request.urlopen(server["url"] + "/health", timeout=10) as r:  # no key needed
        assert json.loads(r.read())["status"] == "ok"


def test_dead_endpoint_fails_clearly_and_is_in_the_ledger(tmp_path):
    llm = make_llm("any", base_url=f"http://127.0.0.1:{free_port()}/v1", cache=tmp_path / "c.sqlite", max_retries=1,
                   timeout=5)
    with pytest.raises(LLMError, match="cannot reach the LLM endpoint"):
        llm.chat("hello")
    assert llm.summary()["errors"] == 1 and llm.ledger[0]["error"]


class _FlakyProxy(BaseHTTPRequestHandler):
    """Answers the first POST with HTTP 500, then forwards to the real server."""

    failures_left = 1
    target = ""

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _FlakyProxy.failures_left > 0:
            _FlakyProxy.failures_left -= 1
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "temporary failure"}}')
            return
        req = urllib.request.Request(self.target + self.path, body, {"Content-Type": "application/json",
                                                                    "Authorization": self.headers["Authorization"]})
        with urllib.request.urlopen(req, timeout=120) as r:
            data = r.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_endpoint_answering_500_then_200_is_retried_and_ledgered(server, tmp_path, monkeypatch):
    _FlakyProxy.target = server["url"]
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv("PT_TEST_KEY", KEY)
    try:
        llm = make_llm("smollm2-135m", base_url=f"http://127.0.0.1:{proxy.server_port}/v1", api_key_env="PT_TEST_KEY",
                       cache=tmp_path / "c.sqlite", max_retries=2)
        texts = llm.chat("Say hello.", max_tokens=6, temperature=0)
    finally:
        proxy.shutdown()
    assert texts[0].strip()
    entry = llm.ledger[0]
    assert entry["attempts"] == 2 and entry["error"] is None and entry["completion_tokens"] > 0
    assert llm.summary()["retries"] == 1


def test_an_optimiser_runs_against_prompttune_serve_over_http(server, backbone, data_dir, tmp_path, monkeypatch):
    """The same code path a user's vLLM or llama.cpp server takes: the openai SDK over HTTP."""
    monkeypatch.setenv("PT_TEST_KEY", KEY)
    report = prompttune.train("opro", backbone, "sst2", data_dir, shots=4, seed=0, out=tmp_path / "r",
                              eval_split="dev", eval_limit=16, progress=False, budget=1500, iterations=1,
                              candidates_per_step=2, llm="smollm2-135m", llm_base_url=server["url"] + "/v1",
                              llm_api_key_env="PT_TEST_KEY", llm_cache=str(tmp_path / "c.sqlite"), llm_max_tokens=32)
    llm = report.meta["info"]["llm"]
    assert llm["backend"].startswith("openai:http://127.0.0.1") and llm["new_calls"] == llm["calls"] >= 1
    assert llm["errors"] == 0 and llm["completion_tokens"] > 0
    assert len(report.meta["history"]) > 1 and report.meta["text_prompt"]["template"]


def test_cli_refuses_a_missing_artifact_and_a_dead_llm_endpoint(data_dir, tmp_path):
    from test_cli import run

    result = run("serve", tmp_path / "nope")
    assert result.exit_code == 1 and "not an artifact directory" in result.output
    out = tmp_path / "run"
    result = run("train", "--method", "opro", "--data-dir", data_dir, "--shots", 2, "--budget", 600, "--out", out,
                 "--quiet", "--llm-base-url", f"http://127.0.0.1:{free_port()}/v1", "-p", "llm_cache=null")
    assert result.exit_code == 1 and "error: cannot reach the LLM endpoint" in result.output, result.output
    assert not (out / "prompt.json").exists()  # no artifact, but the failed call is in the ledger
    assert json.loads((out / "llm_ledger.jsonl").read_text().splitlines()[0])["error"]


def test_the_task_model_can_be_an_endpoint_too(server, backbone, data_dir, tmp_path, monkeypatch):
    """Prompts scored by a black-box task model over HTTP: its answers read as label words, each one
    query of the budget, every call ledgered."""
    monkeypatch.setenv("PT_TEST_KEY", KEY)
    url = server["url"] + "/v1"
    report = prompttune.train("opro", backbone, "sst2", data_dir, shots=2, dev_shots=2, seed=0, out=tmp_path / "r",
                              eval_split="dev", eval_limit=8, progress=False, budget=200, iterations=1,
                              candidates_per_step=1, llm_base_url=url, task_llm_base_url=url,
                              task_llm="smollm2-135m", llm_api_key_env="PT_TEST_KEY",
                              llm_cache=str(tmp_path / "c.sqlite"), llm_max_tokens=24)
    info = report.meta["info"]
    assert info["task_llm"]["calls"] == info["queries_used"] > 0  # one endpoint call per query
    assert info["task_llm"]["errors"] == 0 and info["llm"]["calls"] >= 1
    assert report.meta["history"][0]["op"] == "start"


# ------------------------------------------------------------- issue-17 review: prompts only their predictor applies
@pytest.fixture(scope="module")
def own_server(tiny_llama_dir, data_dir, tmp_path_factory):
    """A tiny random Llama serving a deep (key/value) prompt and a boosted ensemble."""
    from prompttune.models import load_backbone

    tiny = load_backbone(str(tiny_llama_dir), device="cpu")
    root = tmp_path_factory.mktemp("serve-own")
    common = {"shots": 2, "seed": 0, "eval_split": "test", "eval_limit": 4, "progress": False}
    prompttune.train("p-tuning-v2", tiny, "sst2", data_dir, out=root / "deep", steps=1, n_tokens=4, **common)
    prompttune.train("prompt-boosting", tiny, "sst2", data_dir, out=root / "boost", n_prompts=2, n_learners=2,
                     budget=64, **common)
    engine = serving_engine([f"deep={root / 'deep'}", f"boost={root / 'boost'}"], tiny, batch_wait_ms=50)
    app = create_app(engine, api_key=KEY, max_tokens_limit=2000)
    with uvicorn_in_thread(app) as url:
        yield {"url": url, "engine": engine, "tiny": tiny, "root": root}
    engine.close()


def _streamed(url: str, body: dict) -> str:
    data = json.dumps({**body, "stream": True}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    text = ""
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=60) as r:
        for line in r:
            line = line.decode().strip()
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                assert "error" not in event, event
                text += event["choices"][0]["text"]
    return text


def test_a_deep_prompt_is_applied_in_streams_and_completions_and_boosting_refuses(own_server):
    url, engine, tiny = own_server["url"] + "/v1/completions", own_server["engine"], own_server["tiny"]
    deep = engine.get("deep").predictor
    texts = ["Once upon a time", "The film was", "Review: dull\nSentiment:"]
    for text in texts:
        body = {"model": "deep", "prompt": text, "max_tokens": 8, "temperature": 0, "raw": True}
        expected = deep.generate(text, max_new_tokens=8, raw=True)  # the predictor, its prompt in place
        status, answer = post(url, body)
        assert status == 200 and answer["choices"][0]["text"] == expected
        assert _streamed(url, body) == expected
    bare = [tiny.generate([t], None, max_new_tokens=8)[0] for t in texts]
    assert [deep.generate(t, max_new_tokens=8, raw=True) for t in texts] != bare  # the prompt makes a difference
    for stream in (False, True):
        status, answer = post(url, {"model": "boost", "prompt": "a fine film", "max_tokens": 4, "stream": stream})
        assert status == 400 and answer["error"]["code"] == "not_a_generator"
    status, answer = post(url, {"model": "deep", "prompt": "", "raw": True})
    assert status == 400 and answer["error"]["code"] == "empty_prompt"


def test_deep_prompt_generation_stops_between_steps(own_server):
    deep, calls = own_server["engine"].get("deep").predictor, []

    def stop_after_three(tokens, scores):
        calls.append(tokens.shape[1])
        return torch.full((tokens.shape[0],), len(calls) >= 3, dtype=torch.bool)

    from transformers import StoppingCriteriaList

    deep.generate("Once upon a time", max_new_tokens=50, raw=True,
                  stopping_criteria=StoppingCriteriaList([stop_after_three]))
    assert calls == [1, 2, 3]


def test_one_bad_request_fails_alone_and_unseeded_samples_differ(own_server):
    engine, tiny = own_server["engine"], own_server["tiny"]
    name = next(iter(engine.prompts))
    good = engine.generate(name, ["Once upon a time"], 4, timeout=60)
    bad = engine.generate(name, ["Once upon a time"], 5000, timeout=60)  # longer than the context: its own error
    assert len(good.result(timeout=60)) == 1
    with pytest.raises(ModelError, match="context"):
        bad.result(timeout=60)
    samples = {engine.generate(name, ["Once upon a time"], 8, temperature=1.0).result(timeout=60)[0][0]
               for _ in range(3)}
    assert len(samples) > 1
    assert engine.get(tiny.model_id) is engine.get(name)  # the backbone's full id is still accepted


def test_fair_sharing_reaches_every_work_beyond_a_batch_and_empty_works_settle():
    from prompttune.serve.scheduler import FairQueue, Work

    queue = FairQueue(10_000)
    works = [Work("k", [0, 1, 2]) for _ in range(100)]
    for w in works:
        queue.submit(w)
    served: set[int] = set()
    for _ in range(2):  # 300 rows waiting, 64 per batch: the second batch goes to the 36 not yet served first
        _, parts = queue.take(lambda key: 64)
        served |= {id(w) for w, _, _ in parts}
        assert sum(b - a for _, a, b in parts) == 64
    assert served == {id(w) for w in works}
    empty = Work("k", [])
    assert queue.submit(empty).result(timeout=1) == []


def test_image_decoding_is_bounded_server_wide(tmp_path):
    import base64
    import io

    from PIL import Image

    from prompttune.serve.clip import DecodeBudget, decode_request_images
    from prompttune.serve.scheduler import Overloaded

    png = io.BytesIO()
    Image.new("RGB", (64, 64)).save(png, format="PNG")
    item = base64.b64encode(png.getvalue()).decode()
    budget = DecodeBudget(4 * 64 * 64 * 3)
    budget.reserve(4 * 64 * 64 * 2)  # other requests are decoding two images' worth
    with pytest.raises(Overloaded):
        decode_request_images([item, item], budget=budget)
    assert budget.used == 4 * 64 * 64 * 2  # a refused request holds nothing
    budget.release(4 * 64 * 64 * 2)
    assert len(decode_request_images([item, item], budget=budget)) == 2 and budget.used == 0

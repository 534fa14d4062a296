"""The server never hangs (issue 17, items 1-8), over real HTTP on loopback with a tiny random Llama of the
real architecture (SmolLM2's tokenizer) and a tiny random CLIP: requests longer than a batch, fair
sharing between requests, bounded generation, failing and abandoned streams, image bombs, every error in
the OpenAI shape, stalled uploads, usage/stop/seed/models/bearer, and a prompt shutdown on SIGTERM.
Every wait in here has a timeout, so a regression fails instead of hanging the suite."""

from __future__ import annotations

import base64
import http.client
import io
import itertools
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

import prompttune
from helpers import free_port, server_in_thread
from prompttune.api import serving_engine
from prompttune.models import load_backbone
from prompttune.serve import create_app, make_server

KEY = "k"
SENTENCES = [f"review number {i}: {'a warm, funny film' if i % 2 else 'dull and far too long'}" for i in range(256)]


@contextmanager
def running(app, engine):
    """`app` on a free loopback port (the production server: make_server), stopped afterwards."""
    try:
        with server_in_thread(make_server(app, engine, port=free_port(), header_timeout=2.0)) as url:
            yield url
    finally:
        engine.close()


def call(url: str, path: str, body=None, method: str | None = None, auth: str | None = f"Bearer {KEY}",
         timeout: float = 60) -> tuple[int, object]:
    """(status, parsed JSON or the raw text when it is not JSON)."""
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
    try:
        conn.request(method or ("GET" if data is None else "POST"), path, data, headers)
        reply = conn.getresponse()
        raw = reply.read().decode("utf-8", "replace")
    finally:
        conn.close()
    try:
        return reply.status, json.loads(raw)
    except json.JSONDecodeError:
        return reply.status, raw


@contextmanager
def open_stream(url: str, body: dict, timeout: float = 30):
    """A streamed completion: yields (status, events) where `events` iterates the parsed `data:` lines."""
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
    conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}).encode(),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    reply = conn.getresponse()

    def events():
        for line in reply:
            line = line.decode().strip()
            if line.startswith("data: "):
                yield line[6:] if line == "data: [DONE]" else json.loads(line[6:])

    try:
        yield reply.status, events()
    finally:
        conn.close()


def error_shape(answer) -> dict:
    assert isinstance(answer, dict) and set(answer) == {"error"}, answer
    assert {"message", "type", "code"} <= set(answer["error"]) and answer["error"]["message"], answer
    return answer["error"]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir), device="cpu")


@pytest.fixture(scope="module")
def artifacts(tiny, data_dir, tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("serve-limits")
    common = {"shots": 2, "seed": 0, "eval_split": "test", "eval_limit": 4, "progress": False}
    prompttune.train("zero-shot", tiny, "sst2", data_dir, out=root / "zs", **common)
    prompttune.train("prompt-tuning", tiny, "sst2", data_dir, out=root / "soft", steps=1, n_tokens=4, **common)
    prompttune.train("zero-shot", tiny, "trec", data_dir, out=root / "trec", **common)
    return [f"{n}={root / n}" for n in ("zs", "soft", "trec")]


@pytest.fixture(scope="module")
def server(tiny, artifacts):
    engine = serving_engine(artifacts, tiny, max_batch=64)
    app = create_app(engine, api_key=KEY, max_tokens_limit=1000, request_timeout=30, body_timeout=1.0)
    with running(app, engine) as url:
        yield {"url": url, "engine": engine, "backbone": next(iter(engine.prompts))}


# ---------------------------------------------------------------------------------------------- item 1
def test_classify_longer_than_a_batch_answers_and_requests_do_not_wait_for_each_other(server):
    url = server["url"]
    status, body = call(url, "/v1/classify", {"model": "soft", "input": SENTENCES[:65]}, timeout=60)
    assert status == 200 and len(body["data"]) == 65
    _, alone = call(url, "/v1/classify", {"model": "soft", "input": SENTENCES[64:65]})
    assert body["data"][64]["scores"] == pytest.approx(alone["data"][0]["scores"], abs=1e-4)  # the second batch

    with ThreadPoolExecutor(2) as pool:  # together: one spans two batches, the other shares the first
        sixty = pool.submit(call, url, "/v1/classify", {"model": "zs", "input": SENTENCES[:60]})
        ten = pool.submit(call, url, "/v1/classify", {"model": "trec", "input": ["Who wrote Hamlet?"] * 10})
        assert [len(f.result(timeout=60)[1]["data"]) for f in (sixty, ten)] == [60, 10]


def test_a_small_request_is_not_stuck_behind_a_big_one(server):
    engine, finished = server["engine"], []
    big = engine.classify("zs", SENTENCES)  # four batches of 64
    small = engine.classify("trec", ["Who wrote Hamlet?"])
    for name, future in (("big", big), ("small", small)):
        future.add_done_callback(lambda _, name=name: finished.append(name))
    assert len(big.result(timeout=60)) == 256 and len(small.result(timeout=60)) == 1
    assert finished == ["small", "big"]


# ---------------------------------------------------------------------------------------------- item 2
def test_generation_is_capped_per_request_split_into_batches_and_shared(tiny, artifacts):
    engine = serving_engine(artifacts[:1], tiny, max_batch=16)
    app = create_app(engine, api_key=KEY, max_request_rows=48, request_timeout=60)
    backbone = next(iter(engine.prompts))
    with running(app, engine) as url:
        status, answer = call(url, "/v1/completions", {"model": "zs", "prompt": ["a", "b", "c", "d"], "n": 16,
                                                       "max_tokens": 1})
        error = error_shape(answer)
        assert status == 400 and "limit is 48" in error["message"] and "--max-request-rows" in error["message"]

        passes = engine.stats["forward_passes"]
        status, answer = call(url, "/v1/completions", {"model": backbone, "prompt": ["one", "two", "three"],
                                                       "n": 16, "max_tokens": 3, "temperature": 0})
        assert status == 200 and len(answer["choices"]) == 48
        assert engine.stats["forward_passes"] - passes == 3  # 48 rows, at most 16 per generate call

        done: dict[str, float] = {}

        def timed(name: str, path: str, body: dict) -> None:
            status, _ = call(url, path, body)
            done[name] = time.monotonic() if status == 200 else float("nan")

        with ThreadPoolExecutor(3) as pool:
            passes = engine.stats["forward_passes"]
            big = pool.submit(timed, "big", "/v1/completions", {"model": backbone, "prompt": ["x", "y", "z"],
                                                               "n": 16, "max_tokens": 100, "temperature": 0})
            deadline = time.monotonic() + 30
            while engine.stats["forward_passes"] == passes:  # its first batch of three has started
                assert time.monotonic() < deadline
                time.sleep(0.002)
            small = pool.submit(timed, "small", "/v1/completions", {"model": backbone, "prompt": "hi", "max_tokens": 2})
            classify = pool.submit(timed, "classify", "/v1/classify", {"model": "zs", "input": ["a fine film"]})
            for f in (big, small, classify):
                f.result(timeout=120)
        assert done["small"] < done["big"] and done["classify"] < done["big"], done


# ---------------------------------------------------------------------------------------------- item 3
def test_a_failing_stream_ends_with_an_error_event_and_leaks_nothing(server, monkeypatch):
    url, model = server["url"], server["engine"].backbone.model
    status, answer = call(url, "/v1/completions", {"model": server["backbone"], "prompt": "", "stream": True})
    assert status == 400 and error_shape(answer)["code"] == "empty_prompt"

    real_generate = model.generate

    def failing_generate(*args, **kwargs):  # generation raises after two tokens, inside transformers' loop
        streamer = kwargs.get("streamer")
        if streamer is not None:
            put, calls = streamer.put, itertools.count()

            def put_then_fail(value):
                if next(calls) >= 3:
                    raise RuntimeError("injected failure in the middle of generation")
                put(value)

            streamer.put = put_then_fail
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", failing_generate)
    threads = threading.active_count()
    for _ in range(8):
        with open_stream(url, {"model": server["backbone"], "prompt": "Once upon a time", "max_tokens": 20},
                         timeout=20) as (status, events):
            last = list(events)[-1]
        assert status == 200 and error_shape(last)["code"] == "internal_error"
        assert "Traceback" not in last["error"]["message"]
    assert threading.active_count() <= threads + 1  # nothing left blocked per failed stream
    monkeypatch.setattr(model, "generate", real_generate)
    with open_stream(url, {"model": server["backbone"], "prompt": "Once upon a time", "max_tokens": 5}) as (_, events):
        got = list(events)
    assert got[-1] == "[DONE]" and got[-2]["choices"][0]["finish_reason"] in ("length", "stop")


# ---------------------------------------------------------------------------------------------- item 4
def test_streams_stop_when_the_client_leaves_and_never_block_classification(server):
    url, backbone = server["url"], server["backbone"]
    one_token = {"model": backbone, "prompt": "Hello", "max_tokens": 1}
    start = time.monotonic()  # baselines, measured here on this (possibly busy) machine
    assert call(url, "/v1/completions", one_token, timeout=30)[0] == 200
    alone_s = time.monotonic() - start
    long = {"model": backbone, "prompt": "Once upon a time", "max_tokens": 1000, "temperature": 0}
    start = time.monotonic()
    with open_stream(url, {**long, "max_tokens": 20}) as (_, events):
        assert list(events)[-1] == "[DONE]"
    per_token_s = (time.monotonic() - start) / 20
    with open_stream(url, long) as (status, events):  # about 5 s of generation on the tiny model
        assert status == 200 and next(events) and next(events)
        status, answer = call(url, "/v1/classify", {"model": "zs", "input": ["a fine film"]}, timeout=30)
        assert status == 200 and next(events) != "[DONE]"  # answered while the stream went on
    time.sleep(0.3)  # the client has gone: its generation must stop at the next token
    start = time.monotonic()
    assert call(url, "/v1/completions", one_token, timeout=30)[0] == 200
    # not behind the rest of the abandoned stream (hundreds of tokens): a generous bound from the baselines
    assert time.monotonic() - start < 5 * alone_s + 100 * per_token_s, (alone_s, per_token_s)


# ---------------------------------------------------------------------------------------------- item 5
def _png(width: int, height: int) -> bytes:
    """A black 1-bit grayscale PNG of any size, compressed row by row (a 20000x20000 one is ~60 kB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer, row, parts = zlib.compressobj(9), b"\0" * (1 + (width + 7) // 8), []
    for _ in range(height):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def clip_zs(tmp_path_factory):
    """A tiny random CLIP model and a zero-shot artifact on a two-class image folder."""
    from PIL import Image

    from prompttune.models.clip import load_clip_backbone
    from prompttune.testing import tiny_clip

    root = tmp_path_factory.mktemp("serve-clip")
    for split in ("train", "test"):
        for name, colour in (("coat", (200, 30, 30)), ("sandal", (30, 30, 200))):
            folder = root / "images" / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((28, 28, 3), colour, np.uint8)).save(folder / f"{i}.png")
    clip = load_clip_backbone(str(tiny_clip(root / "clip")), device="cpu")
    prompttune.train("zero-shot-clip", clip, str(root / "images"), shots=1, out=root / "zs", eval_limit=2,
                     progress=False)
    return clip, root / "zs"


def test_one_server_serves_one_kind_and_each_name_once(clip_zs, tiny, artifacts, backbone):
    """The engine comes from the artifacts' kind: kinds are not mixed, and a kind's engine refuses another's."""
    from prompttune.errors import ArtifactError, ConfigError
    from prompttune.kinds import get_kind

    clip, zs = clip_zs
    with pytest.raises(ConfigError, match=r"artifacts of different kinds \(clip: .*zs; text: zs=.*\) cannot be "
                                          "served together"):
        serving_engine([str(zs), artifacts[0]], clip)
    with pytest.raises(ConfigError, match=rf"artifact {zs} is a clip artifact; this server runs the text model"):
        get_kind("text").engine(tiny, [str(zs)])
    with pytest.raises(ConfigError, match="is a text artifact; this server runs the clip model"):
        get_kind("clip").engine(clip, [artifacts[0].partition("=")[2]])
    with pytest.raises(ConfigError, match="artifact name 'a' is used twice"):
        serving_engine([f"a={zs}", f"a={zs}"], clip)
    with pytest.raises(ConfigError, match=f"artifact name '{Path(tiny.model_id).name}' is used twice"):
        serving_engine([f"{Path(tiny.model_id).name}={artifacts[0].partition('=')[2]}"], tiny)
    with pytest.raises(ArtifactError, match=rf"artifact {artifacts[0].partition('=')[2]} was trained on backbone"):
        serving_engine(artifacts[:1], backbone)  # trained on the tiny model, not on smollm2


def test_image_bombs_are_refused_from_the_header(clip_zs):
    from PIL import Image

    clip, zs = clip_zs
    engine = serving_engine([f"zs={zs}"], clip)
    app = create_app(engine, api_key=KEY, max_body_bytes=2_000_000, max_image_pixels=2000 * 2000,
                     max_decoded_bytes=20 * 2**20)
    ok = io.BytesIO()
    Image.fromarray(np.full((28, 28, 3), 200, np.uint8)).save(ok, format="PNG")

    def classify(*pngs: bytes) -> tuple[int, object, float]:
        start = time.monotonic()
        status, answer = call(url, "/v1/classify", {"model": "zs", "input": [base64.b64encode(p).decode()
                                                                            for p in pngs]}, timeout=60)
        return status, answer, time.monotonic() - start

    with running(app, engine) as url:
        classify(ok.getvalue())  # warm
        baseline_s = min(classify(ok.getvalue())[2] for _ in range(2))
        bomb = _png(20000, 20000)  # 400 M pixels: beyond PIL's own limit too
        assert len(bomb) < 200_000
        for png in (bomb, _png(3000, 3000)):
            status, answer, seconds = classify(ok.getvalue(), png)
            message = error_shape(answer)["message"]
            assert status == 400 and message.startswith("input[1]:") and "--max-image-pixels" in message, answer
            assert seconds < 2.0 + 10 * baseline_s  # decoding would take far longer (and GBs)
        status, answer, _ = classify(*[_png(1500, 1500)] * 4)  # each allowed, together over the per-request bound
        assert status == 400 and "--max-decoded-mb" in error_shape(answer)["message"]
        status, answer, _ = classify(ok.getvalue())
        assert status == 200 and answer["data"][0]["label"] in ("coat", "sandal")


# ---------------------------------------------------------------------------------------------- item 6
def test_every_error_is_in_the_openai_shape(server, caplog):
    url, backbone = server["url"], server["backbone"]
    cases = [
        ("GET", "/v1/nowhere", None, 404, "not_found"),
        ("GET", "/v1/completions", None, 405, "method_not_allowed"),
        ("POST", "/v1/classify", b'{"model": "zs", "input": ["\xff\xfe"]}', 400, "invalid_json"),
        ("POST", "/v1/completions", {"model": backbone, "prompt": "hi", "seed": 10**23}, 400, "invalid_body"),
        ("POST", "/v1/completions", {"model": backbone, "prompt": ""}, 400, "empty_prompt"),
        ("POST", "/v1/classify", {"model": "nope", "input": ["x"]}, 404, "model_not_found"),
    ]
    for method, path, body, status, code in cases:
        got, answer = call(url, path, body, method=method)
        assert (got, error_shape(answer)["code"]) == (status, code), (path, answer)

    soft = server["engine"].prompts["soft"].predictor
    right = soft.prompt
    soft.prompt = torch.zeros(4, 100)  # a prompt of the wrong width: fails deep inside the model
    try:
        with caplog.at_level(logging.ERROR):
            got, answer = call(url, "/v1/classify", {"model": "soft", "input": ["x"]})
    finally:
        soft.prompt = right
    error = error_shape(answer)
    assert got == 500 and error["code"] == "internal_error" and "Traceback" not in error["message"]
    assert any(r.exc_info for r in caplog.records)  # the traceback is in the server's log


# ---------------------------------------------------------------------------------------------- item 7
def test_stalled_uploads_and_silent_connections_are_dropped(server):
    port = urlparse(server["url"]).port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # half a body, then nothing
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\": ")
        start, reply = time.monotonic(), b""
        while chunk := sock.recv(4096):
            reply += chunk
        assert time.monotonic() - start < 5
    assert reply.startswith(b"HTTP/1.1 408") and b'"body_timeout"' in reply
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # half a request head
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        assert sock.recv(4096) == b"" and time.monotonic() - start < 5  # closed by the server
    assert call(server["url"], "/v1/models")[0] == 200  # and the server still answers


def test_a_pipelined_request_outlives_the_head_timer(server):
    """Two requests in one write: the second (a generation longer than the 2 s head timer) still answers."""
    port, backbone = urlparse(server["url"]).port, server["backbone"]
    body = json.dumps({"model": backbone, "prompt": "Once upon a time", "max_tokens": 1000, "temperature": 0})
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body.encode()))
        reader = sock.makefile("rb")
        for _ in range(2):
            status, headers = reader.readline(), []
            assert status.startswith(b"HTTP/1.1 200"), status  # b"": the server closed the connection
            while (line := reader.readline()) not in (b"\r\n", b""):
                headers.append(line)
            length = next(int(h.split(b":")[1]) for h in headers if h.lower().startswith(b"content-length"))
            answer = json.loads(reader.read(length))
    assert answer["usage"]["completion_tokens"] > 0


# ---------------------------------------------------------------------------------------------- item 8
def test_usage_stop_and_seed_in_streams_model_names_and_bearer_in_any_case(server):
    url, backbone = server["url"], server["backbone"]
    one = call(url, "/v1/completions", {"model": "zs", "prompt": ["a fine film", "a bad one"], "max_tokens": 2})[1]
    three = call(url, "/v1/completions", {"model": "zs", "prompt": ["a fine film", "a bad one"], "n": 3,
                                          "max_tokens": 2})[1]
    assert len(three["choices"]) == 6 and three["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]

    sampled = {"model": backbone, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.0, "seed": 7}
    whole = call(url, "/v1/completions", sampled)[1]["choices"][0]["text"]
    with open_stream(url, sampled) as (_, events):
        assert "".join(e["choices"][0]["text"] for e in events if e != "[DONE]") == whole  # the seed is used
    stop = whole.strip()[3:6]
    with open_stream(url, {**sampled, "stop": [stop]}) as (_, events):
        got = [e for e in events if e != "[DONE]"]
    assert "".join(e["choices"][0]["text"] for e in got) == whole[: whole.index(stop)]
    assert got[-1]["choices"][0]["finish_reason"] == "stop"

    for auth in (f"bearer {KEY}", f"BEARER {KEY}", f"Bearer  {KEY}"):
        status, models = call(url, "/v1/models", auth=auth)
        assert status == 200, auth
    assert call(url, "/v1/models", auth="Basic k")[0] == 401
    for m in models["data"]:
        assert "path" not in m and os.sep not in m["id"] and not Path(m["id"]).is_absolute(), m


# ---------------------------------------------------------------------------------------------- shutdown
def test_sigterm_stops_the_server_promptly_with_requests_in_flight(tiny_llama_dir, artifacts):
    port = free_port()
    command = [sys.executable, "-c", "from prompttune.cli import app; app()", "serve", artifacts[0],
               "--port", str(port), "--max-tokens-limit", "1000", "--device", "cpu"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            try:
                if call(url, "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        with ThreadPoolExecutor(3) as pool:
            inflight = [pool.submit(call, url, "/v1/classify", {"model": "zs", "input": SENTENCES[:65]}, timeout=60),
                        pool.submit(call, url, "/v1/completions", {"model": Path(tiny_llama_dir).name,
                                                                  "prompt": ["a"] * 32, "max_tokens": 1000},
                                    timeout=60)]
            time.sleep(1.0)
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            assert time.monotonic() - start < 10
            for f in inflight:  # each answered (done, or 503 shutting down) or its connection closed
                try:
                    status, answer = f.result(timeout=10)
                    assert status == 200 or error_shape(answer)["code"] == "shutting_down", answer
                except (ConnectionError, http.client.HTTPException):
                    pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

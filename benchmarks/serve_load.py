"""`prompttune serve` under mixed load: N concurrent clients for a fixed time, on loopback.

The server is the real CLI (`prompttune serve`, a subprocess, default model SmolLM2-135M) serving four
artifacts this script trains quickly itself (zero-shot SST-2 and TREC, two steps of prompt tuning on
SST-2, a hard prompt picked by `select`). Each client loops until the time is up, sending, at random:

- /v1/classify with 1 to 200 inputs (log-uniform) to a random artifact;
- /v1/completions (1-2 prompts, n 1-2, a few tokens) to an artifact or the backbone;
- /v1/chat/completions to the backbone;
- streamed completions (some with a stop string);
- a share of malformed requests (bad JSON, non-UTF-8, unknown model, missing field, too many rows, too
  many tokens, empty prompt, huge seed, unknown route, wrong method), which must get a 4xx error in the
  OpenAI shape.

Clients wait a random think time after each well-formed request (a second at most after a malformed
one, which costs the server nothing), chosen so that the offered work is `--load` (0.6) of what the
server can do: warm-up requests measure the seconds per classified row and per generated token on
this machine, and the mix's mean cost follows; while answers come back slower than that predicts (a
shared machine got busier), the clients stretch their think time, as real clients back off. Without
it, 32 clients sending back to back queue more work than two CPU cores finish within any request
timeout (one 200-row request alone can take most of a minute there). Inputs are SST-2 test sentences
cut to `--max-words` words; the server runs with `--max-batch 16` (on a CPU, larger batches save
nothing and make a small request wait for a bigger batch).

Every well-formed answer is checked (status 200, one result per input, streams ending in [DONE]).
It prints requests/s, p50/p95/p99 latency per kind, and errors by kind; the last line is

    serve_load clients=<n> requests=<r> ok=<o> errors=<e> p95_ms=<p> max_rss_mb=<m>

where `errors` counts failures of well-formed requests only (it must be 0), `ok` counts the answers
that were right (malformed requests included, when refused as they should be), p95 is over the
well-formed requests, and max_rss_mb is the server process's peak resident memory.

    python benchmarks/serve_load.py --data-dir ../shared/data            # 32 clients, 120 s
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MALFORMED = {  # kind: (method, path, body)
    "bad_json": ("POST", "/v1/classify", b'{"model": "zs-sst2", "input": ['),
    "non_utf8": ("POST", "/v1/classify", b'{"model": "zs-sst2", "input": ["\xff\xfe"]}'),
    "unknown_model": ("POST", "/v1/classify", {"model": "nope", "input": ["x"]}),
    "missing_field": ("POST", "/v1/classify", {"model": "zs-sst2"}),
    "too_many_rows": ("POST", "/v1/completions", {"model": "zs-sst2", "prompt": ["x"] * 10, "n": 16}),
    "too_many_tokens": ("POST", "/v1/completions", {"model": "zs-sst2", "prompt": "x", "max_tokens": 100_000}),
    "empty_prompt": ("POST", "/v1/completions", {"model": "BACKBONE", "prompt": ""}),
    "huge_seed": ("POST", "/v1/completions", {"model": "BACKBONE", "prompt": "x", "seed": 10**23}),
    "unknown_route": ("GET", "/v1/nowhere", None),
    "wrong_method": ("GET", "/v1/completions", None),
}


def make_artifacts(model: str, data_dir: Path, work: Path) -> list[str]:
    import prompttune
    from prompttune.models import load_backbone

    wanted = {"zs-sst2": ("zero-shot", "sst2", {}), "zs-trec": ("zero-shot", "trec", {}),
              "soft-sst2": ("prompt-tuning", "sst2", {"steps": 2, "n_tokens": 8}),
              "hard-sst2": ("select", "sst2", {"candidates": ["Review: {sentence}\nSentiment:",
                                                              "{sentence}\nDid the reviewer like the movie? Answer:"]})}
    backbone = None
    for name, (method, task, params) in wanted.items():
        if not (work / name / "prompt.json").exists():
            backbone = backbone or load_backbone(model, device="cpu")
            prompttune.train(method, backbone, task, data_dir, shots=2, seed=0, out=work / name, eval_split="test",
                             eval_limit=8, progress=False, overwrite=True, **params)
    return [f"{n}={work / n}" for n in wanted]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body, timeout: float) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    try:
        conn.request(method, path, data, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


class Client:
    """One client: plans random requests (`plan`) and sends them until `deadline`, waiting a random think
    time (mean `think`) before each; every outcome goes to `record`."""

    def __init__(self, port: int, rng: random.Random, sentences: list[str], backbone: str, artifacts: list[str],
                 malformed_share: float, timeout: float, record=None):
        self.port, self.rng, self.sentences, self.backbone = port, rng, sentences, backbone
        self.artifacts, self.malformed_share, self.timeout, self.record = artifacts, malformed_share, timeout, record

    def plan(self) -> tuple[str, bool, str, str, object, tuple[float, float], object]:
        """(kind, well_formed, method, path, body, cost, check): cost = (classify rows, generated tokens)."""
        rng = self.rng
        if rng.random() < self.malformed_share:
            kind = rng.choice(sorted(MALFORMED))
            method, path, body = MALFORMED[kind]
            if isinstance(body, dict):
                body = json.loads(json.dumps(body).replace('"BACKBONE"', json.dumps(self.backbone)))
            return f"malformed:{kind}", False, method, path, body, (0, 0), _expect_client_error
        kind = rng.choices(["classify", "completion", "chat", "stream"], [0.55, 0.2, 0.1, 0.15])[0]
        if kind == "classify":
            rows = max(1, min(200, round(math.exp(rng.uniform(0, math.log(200))))))  # log-uniform 1-200
            model = rng.choice(self.artifacts)
            inputs = ["Who wrote Hamlet?" if model == "zs-trec" else rng.choice(self.sentences) for _ in range(rows)]
            return (f"classify_{'big' if rows > 64 else 'small'}", True, "POST", "/v1/classify",
                    {"model": model, "input": inputs}, (rows, 0),
                    lambda s, raw: _expect_ok(s, raw, lambda a: len(a["data"]) == rows))
        if kind == "completion":
            prompts, n, tokens = rng.randint(1, 2), rng.randint(1, 2), rng.randint(4, 12)
            body = {"model": rng.choice([self.backbone, "zs-sst2", "soft-sst2"]), "n": n, "max_tokens": tokens,
                    "prompt": [rng.choice(self.sentences) for _ in range(prompts)],
                    "temperature": rng.choice([0.0, 0.8])}
            return ("completion", True, "POST", "/v1/completions", body, (0, tokens * (1 + 0.25 * (prompts * n - 1))),
                    lambda s, raw: _expect_ok(s, raw, lambda a: len(a["choices"]) == prompts * n))
        if kind == "chat":
            body = {"model": self.backbone, "messages": [{"role": "user", "content": "Name a colour."}],
                    "max_tokens": 8, "temperature": 0}
            return ("chat", True, "POST", "/v1/chat/completions", body, (0, 12),
                    lambda s, raw: _expect_ok(s, raw, lambda a: len(a["choices"]) == 1))
        body = {"model": rng.choice([self.backbone, "soft-sst2"]), "prompt": rng.choice(self.sentences),
                "max_tokens": 16, "stream": True, **({"stop": ["."]} if rng.random() < 0.5 else {})}
        return "stream", True, "POST", "/v1/completions", body, (0, 16), _check_stream

    def run(self, deadline: float, pacer: Pacer) -> None:
        time.sleep(self.rng.uniform(0, min(pacer.think, max(0.0, deadline - time.monotonic()))))
        while time.monotonic() < deadline:
            kind, well_formed, method, path, body, cost, check = self.plan()
            start = time.monotonic()
            try:
                status, raw = request(self.port, method, path, body, self.timeout)
                problem = check(status, raw)
            except (OSError, http.client.HTTPException) as exc:
                problem = type(exc).__name__
            seconds = time.monotonic() - start
            self.record(kind, well_formed, seconds, problem)
            if well_formed:
                pacer.observe(cost, seconds)
            pause = pacer.pause(self.rng) if well_formed else self.rng.uniform(0, 1)  # malformed: costs nothing
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))


class Pacer:
    """The clients' think time: mean `think` from the calibration, stretched while answers come back slower
    than the calibration predicts at this load (the machine got busier, the queue grew), so that clients
    back off as real ones would, instead of queueing work no request timeout can cover."""

    def __init__(self, think: float, per_row: float, per_token: float, load: float):
        self.think, self.per_row, self.per_token = think, per_row, per_token
        self.expected = 1 / max(0.05, 1 - min(load, 0.95))  # answer time over work, processor sharing at `load`
        self.slowdown = 1.0
        self.lock = threading.Lock()

    def observe(self, cost: tuple[float, float], seconds: float) -> None:
        predicted = max(0.05, cost[0] * self.per_row + cost[1] * self.per_token) * self.expected
        with self.lock:
            self.slowdown = min(50.0, max(1.0, 0.7 * self.slowdown + 0.3 * seconds / predicted))

    def pause(self, rng: random.Random) -> float:
        return rng.expovariate(1 / self.think) * self.slowdown if self.think else 0.0


def calibrate(port: int, sentences: list[str], backbone: str, timeout: float) -> tuple[float, float]:
    """Seconds per classified row and per generated token on this machine: after a warm-up, the slower
    of two measurements of each."""
    request(port, "POST", "/v1/classify", {"model": "zs-sst2", "input": sentences[:4]}, timeout)
    request(port, "POST", "/v1/completions", {"model": backbone, "prompt": sentences[0], "max_tokens": 2}, timeout)
    per_row = per_token = 0.0
    for _ in range(2):
        start = time.monotonic()
        status, _ = request(port, "POST", "/v1/classify", {"model": "zs-sst2", "input": sentences[:16]}, timeout)
        per_row = max(per_row, (time.monotonic() - start) / 16)
        start = time.monotonic()
        status2, _ = request(port, "POST", "/v1/completions", {"model": backbone, "prompt": sentences[0],
                                                               "max_tokens": 8, "temperature": 0}, timeout)
        per_token = max(per_token, (time.monotonic() - start) / 8)
        if status != 200 or status2 != 200:
            raise SystemExit(f"calibration requests failed ({status}, {status2})")
    return per_row, per_token


def _expect_ok(status: int, raw: bytes, valid) -> str | None:
    if status != 200:
        try:
            return f"{status} {json.loads(raw)['error']['code']}"
        except (ValueError, KeyError, TypeError):
            return f"{status} (not the OpenAI error shape)"
    return None if valid(json.loads(raw)) else "200 with a wrong answer"


def _check_stream(status: int, raw: bytes) -> str | None:
    if status != 200:
        return _expect_ok(status, raw, lambda a: True)
    events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return "stream without [DONE]" if not any('"error"' in e for e in events) else "stream error event"
    return None


def _expect_client_error(status: int, raw: bytes) -> str | None:
    try:
        error = json.loads(raw)["error"]
        shaped = isinstance(error["message"], str) and "type" in error and "code" in error
    except (ValueError, KeyError, TypeError):
        shaped = False
    return None if 400 <= status < 500 and shaped else f"{status}{'' if shaped else ' (not the OpenAI shape)'}"


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-serve-load"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    parser.add_argument("--load", type=float, default=0.6, help="offered work as a share of the measured capacity "
                        "(sets the clients' think time); above 1 the queue grows until requests time out")
    parser.add_argument("--malformed", type=float, default=0.25, help="share of malformed requests")
    parser.add_argument("--max-words", type=int, default=10, help="inputs: SST-2 test sentences cut to this many words")
    parser.add_argument("--request-timeout", type=float, default=300.0, help="the server's --request-timeout")
    parser.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch (on a CPU, larger "
                        "batches save nothing and make small requests wait longer)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    specs = make_artifacts(args.model, args.data_dir, args.work)
    names = [s.split("=")[0] for s in specs]
    sentences = [" ".join(line.split(" ", 1)[1].split()[: args.max_words]) for line in
                 (args.data_dir / "sst2" / "stsa.binary.test").read_text().splitlines()[:500]]
    port = free_port()
    command = [sys.executable, "-c", "from prompttune.cli import app; app()", "serve", *specs, "--model", args.model,
               "--port", str(port), "--device", "cpu", "--request-timeout", str(args.request_timeout),
               "--max-batch", str(args.max_batch)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    lock, outcomes = threading.Lock(), []

    def record(kind: str, well_formed: bool, seconds: float, problem: str | None) -> None:
        with lock:
            outcomes.append((kind, well_formed, seconds, problem))

    try:
        started = time.monotonic()
        while True:  # bounded: the model loads in well under three minutes
            if server.poll() is not None or time.monotonic() - started > 180:
                raise SystemExit(f"the server did not start (exit status {server.poll()})")
            try:
                status, raw = request(port, "GET", "/v1/models", None, 5)
                if status == 200:
                    backbone = json.loads(raw)["data"][0]["id"]
                    break
            except OSError:
                time.sleep(0.5)
        timeout = args.request_timeout + 30
        per_row, per_token = calibrate(port, sentences, backbone, timeout)
        sampler = Client(port, random.Random(args.seed - 1), sentences, backbone, names, args.malformed, timeout)
        costs = [rows * per_row + tokens * per_token for _, well_formed, *_, (rows, tokens), _ in
                 (sampler.plan() for _ in range(5000)) if well_formed]
        mean_cost = sum(costs) / len(costs)
        think = max(0.0, args.clients * mean_cost / args.load - mean_cost)
        print(f"calibration: {per_row * 1000:.0f} ms per classified row, {per_token * 1000:.0f} ms per generated "
              f"token; a well-formed request costs {mean_cost:.2f} s on average, so {args.clients} clients at load "
              f"{args.load:g} think {think:.1f} s on average after one", flush=True)

        deadline = time.monotonic() + args.duration
        clients = [Client(port, random.Random(args.seed * 1000 + i), sentences, backbone, names, args.malformed,
                          timeout, record) for i in range(args.clients)]
        pacer = Pacer(think, per_row, per_token, args.load)
        threads = [threading.Thread(target=c.run, args=(deadline, pacer), daemon=True) for c in clients]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:  # each finishes its last request within the client timeout
            t.join(timeout=args.duration + timeout + 30)
        wall = time.monotonic() - start
        rss = peak_rss_mb(server.pid)
        print(f"clients' back-off at the end: think time x{pacer.slowdown:.1f}", flush=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    with lock:
        outcomes = list(outcomes)

    by_kind: dict[str, list] = defaultdict(list)
    for o in outcomes:
        by_kind[o[0].split(":")[0]].append(o)
    print(f"\n{len(outcomes)} requests from {args.clients} clients in {wall:.0f} s ({len(outcomes) / wall:.2f} "
          f"requests/s), {args.model} on the CPU, {len(names)} artifacts\n")
    print("| kind | requests | failed | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for kind, rows in sorted(by_kind.items()):
        seconds = [r[2] for r in rows]
        print(f"| {kind} | {len(rows)} | {sum(r[3] is not None for r in rows)} | {percentile(seconds, 0.5):.0f} | "
              f"{percentile(seconds, 0.95):.0f} | {percentile(seconds, 0.99):.0f} |")
    well = [o for o in outcomes if o[1]]
    errors = Counter(f"{o[0]}: {o[3]}" for o in well if o[3] is not None)
    wrong_4xx = Counter(f"{o[0]}: {o[3]}" for o in outcomes if not o[1] and o[3] is not None)
    malformed = Counter(o[0].split(":")[1] for o in outcomes if not o[1])
    print(f"\nmalformed requests sent: {dict(sorted(malformed.items()))}")
    print(f"errors by kind (well-formed requests): {dict(errors) or 'none'}")
    print(f"malformed requests not answered with a 4xx in the OpenAI shape: {dict(wrong_4xx) or 'none'}")
    seconds = [o[2] for o in well]
    ok = sum(o[3] is None for o in outcomes)
    print(f"well-formed latency: p50 {percentile(seconds, 0.5):.0f} ms, p95 {percentile(seconds, 0.95):.0f} ms, "
          f"p99 {percentile(seconds, 0.99):.0f} ms")
    print(f"serve_load clients={args.clients} requests={len(outcomes)} ok={ok} errors={sum(errors.values())} "
          f"p95_ms={percentile(seconds, 0.95):.0f} max_rss_mb={rss:.0f}")
    return 1 if errors or wrong_4xx else 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())

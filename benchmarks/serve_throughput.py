"""`prompttune serve` throughput: requests for different learned prompts, batched vs. one at a time.

One server in this process (uvicorn on loopback, one frozen SmolLM2-135M) serves three artifacts:
two soft prompts of different lengths (SST-2) and a hard prompt (SST-2). The same set of
/v1/classify requests (one sentence each, cycling over the three artifacts) is sent

- one at a time: a single client, each request waiting for the previous answer;
- concurrently, unbatched: `--clients` clients at once, the engine limited to one row per forward pass;
- concurrently, batched: `--clients` clients at once, the engine putting every waiting request,
  whatever its prompt, into one forward pass (each row with its own prompt).

Last line: batched_speedup=<x> p95_ms=<ms> errors=<n>   (x: batched requests/s over one-at-a-time
requests/s; p95 latency and errors of the batched run)

    python benchmarks/serve_throughput.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvicorn

import prompttune
from prompttune.api import serving_engine
from prompttune.models import load_backbone
from prompttune.serve import Engine, create_app

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_artifacts(backbone, data_dir: Path, work: Path) -> list[str]:
    common = {"shots": 2, "seed": 0, "eval_split": "test", "eval_limit": 8, "progress": False}
    wanted = {"soft8": ("prompt-tuning", {"steps": 2, "n_tokens": 8}),
              "soft20": ("prompt-tuning", {"steps": 2, "n_tokens": 20}),
              "hard": ("select", {"candidates": ["Review: {sentence}\nSentiment:",
                                                 "{sentence}\nDid the reviewer like the movie? Answer:"]})}
    for name, (method, params) in wanted.items():
        if not (work / name / "prompt.json").exists():
            prompttune.train(method, backbone, "sst2", data_dir, out=work / name, overwrite=True, **common, **params)
    return [f"{n}={work / n}" for n in wanted]


def start_server(engine: Engine) -> tuple[uvicorn.Server, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}/v1/classify"


def run(url: str, requests: list[dict], clients: int) -> tuple[float, list[float], int]:
    def one(body: dict) -> tuple[bool, float]:
        start = time.perf_counter()
        try:
            req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as r:
                ok = r.status == 200 and len(json.loads(r.read())["data"]) == 1
        except (urllib.error.URLError, OSError):
            ok = False
        return ok, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, requests))
    wall = time.perf_counter() - start
    return wall, [t for _, t in results], sum(not ok for ok, _ in results)


def p95(latencies: list[float]) -> float:
    return sorted(latencies)[max(0, int(round(0.95 * len(latencies))) - 1)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-serve"))
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()

    backbone = load_backbone("smollm2-135m", device="cpu")
    specs = make_artifacts(backbone, args.data_dir, args.work)
    sentences = [line.split(" ", 1)[1].strip() for line in
                 (args.data_dir / "sst2" / "stsa.binary.test").read_text().splitlines()[: args.requests]]
    names = [s.split("=")[0] for s in specs]
    requests = [{"model": names[i % len(names)], "input": [s]} for i, s in enumerate(sentences)]

    rows = []
    for label, max_batch, clients in [("one at a time", 64, 1), ("concurrent, unbatched", 1, args.clients),
                                      ("concurrent, batched", 64, args.clients)]:
        engine = serving_engine(specs, backbone, max_batch=max_batch)
        server, url = start_server(engine)
        run(url, requests[:6], clients)  # warm-up
        wall, latencies, errors = run(url, requests, clients)
        server.should_exit = True
        engine.close()
        rows.append((label, len(requests) / wall, statistics.median(latencies) * 1000, p95(latencies), errors,
                     engine.stats["forward_passes"]))
        print(f"{label:24s} {rows[-1][1]:6.1f} req/s  p50 {rows[-1][2]:7.0f} ms  p95 {rows[-1][3]:7.0f} ms  "
              f"errors {errors}", flush=True)
        time.sleep(0.5)

    print(f"\n{len(requests)} /v1/classify requests over {len(names)} artifacts (soft 8 tokens, soft 20 tokens, "
          f"hard), {args.clients} concurrent clients, SmolLM2-135M on {backbone.device}\n")
    print("| mode | requests/s | p50 ms | p95 ms | errors |")
    print("|---|---|---|---|---|")
    for label, rate, p50, p95_ms, errors, _ in rows:
        print(f"| {label} | {rate:.1f} | {p50:.0f} | {p95_ms:.0f} | {errors} |")
    speedup = rows[2][1] / rows[0][1]
    print(f"batched vs. unbatched at the same concurrency: {rows[2][1] / rows[1][1]:.2f}x")
    print(f"batched_speedup={speedup:.2f} p95_ms={rows[2][3]:.0f} errors={rows[2][4]}")


if __name__ == "__main__":
    main()

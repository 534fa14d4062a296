"""The benchmark runner: grid validation, local and Ray executors, kill-and-resume, reports in a browser, MLflow,
and data-parallel training under `accelerate launch`."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prompttune.bench import ResultStore, build_report, load_grid, run_grid, write_report
from prompttune.bench import runner as bench_runner
from prompttune.bench.store import Heartbeat
from prompttune.errors import ConfigError

BIN = Path(sys.executable).parent


def _write(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


GRID = """
models: [smollm2-135m]
tasks: [sst2, trec]
data_dir: {data}
shots: [2]
seeds: [0, 1]
eval_limit: 16
methods:
  - zero-shot
  - {{name: prompt-tuning, steps: 3, eval_every: 3, batch_size: 4}}
claims:
  - {{claim: prompt tuning beats zero-shot, source: Lester et al. 2021, better: prompt-tuning, than: zero-shot}}
  - {{claim: a method main does not have, better: no-such-method, than: zero-shot}}
"""


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        ("methods:\n  - zero-shot\n  - {name: prompt-tunning, steps: 3}", 8, "methods[1].name"),
        ("methods:\n  - zero-shot\n  - name: prompt-tuning\n    stepz: 3", 9, "'stepz' is not a hyper-parameter"),
        ("methods:\n  - {name: prompt-tuning, steps: -1}", 7, "methods[0].steps"),
    ],
)
def test_malformed_method_entries_name_the_line_and_key(tmp_path, data_dir, body, line, needle):
    head = f"models: [smollm2-135m]\ntasks: [sst2]\ndata_dir: {data_dir}\nshots: [4]\nseeds: [0]\n"
    path = _write(tmp_path / "grid.yaml", head + body)
    with pytest.raises(ConfigError) as err:
        load_grid(path)
    assert f"{path}:{line}:" in str(err.value) and needle in str(err.value), str(err.value)


def test_malformed_grid_is_rejected_before_anything_runs(tmp_path, data_dir):
    cases = {
        "unknown task": (f"models: [smollm2-135m]\ntasks: [sst2, sst3]\ndata_dir: {data_dir}\nshots: [4]\n"
                         "seeds: [0]\nmethods: [zero-shot]", ":2: tasks[1]", "sst3"),
        "empty axis": (f"models: [smollm2-135m]\ntasks: [sst2]\ndata_dir: {data_dir}\nshots: [4]\nseeds: []\n"
                       "methods: [zero-shot]", ":5: seeds", "empty axis"),
        "unknown key": (f"models: [smollm2-135m]\ntasks: [sst2]\ndata_dir: {data_dir}\nshots: [4]\nseeds: [0]\n"
                        "methods: [zero-shot]\neval_limt: 10", ":7: eval_limt", "unknown key"),
    }
    for name, (text, where, needle) in cases.items():
        path = _write(tmp_path / f"{name.replace(' ', '_')}.yaml", text)
        with pytest.raises(ConfigError) as err:
            load_grid(path)
        assert f"{path}{where}" in str(err.value) and needle in str(err.value), (name, str(err.value))
    # the CLI prints the one line and exits 1 without creating the database or running anything
    db = tmp_path / "runs.db"
    bad = _write(tmp_path / "bad.yaml", cases["unknown task"][0])
    proc = subprocess.run([str(BIN / "prompttune"), "bench", str(bad), "--db", str(db)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "tasks[1]" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not db.exists()


def test_grid_runs_locally_and_on_ray_with_the_same_metrics_and_reports(tmp_path, data_dir, backbone, record_property,
                                                                        request):
    pytest.importorskip("ray")
    grid = load_grid(_write(tmp_path / "grid.yaml", GRID.format(data=data_dir)))
    assert len(grid.cells()) == 8
    bench_runner._BACKBONES[("text", "smollm2-135m")] = backbone  # the local executor reuses the session's model
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # the test's tracking store is a folder; users point at a server
    mlruns = (tmp_path / "mlruns").as_uri()
    started = time.perf_counter()
    local = run_grid(grid, tmp_path / "local.db", executor="local", mlflow_uri=mlruns)
    local_s = time.perf_counter() - started
    assert (local.runs, local.done, local.failed, local.skipped) == (8, 8, 0, 0)

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        started = time.perf_counter()
        remote = run_grid(grid, tmp_path / "ray.db", executor="ray")
        ray_s = time.perf_counter() - started
    finally:
        ray.shutdown()
    assert (remote.done, remote.failed) == (8, 0)
    record_property("figure", f"bench 8 cells: local {local_s:.0f}s, ray(2 cpus) {ray_s:.0f}s")

    def results(db):
        with sqlite3.connect(db) as conn:
            return {key: (acc, f1, params, worker) for key, acc, f1, params, worker in conn.execute(
                "SELECT key, accuracy, macro_f1, trainable_parameters, worker FROM runs WHERE status='done'")}

    a, b = results(tmp_path / "local.db"), results(tmp_path / "ray.db")
    assert a.keys() == b.keys() and len(a) == 8
    for key in a:
        assert a[key][:3] == pytest.approx(b[key][:3], abs=1e-9), key
    assert len({w for *_, w in b.values()} - {w for *_, w in a.values()}) >= 1  # ray ran them in other processes

    # a rerun skips every finished cell
    again = run_grid(grid, tmp_path / "local.db")
    assert again.line() == "runs=8 done=0 failed=0 skipped=8"

    # MLflow got one run per cell with its parameters, metrics and the artifact directory
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlruns)
    runs = client.search_runs([client.get_experiment_by_name("prompttune-grid").experiment_id])
    assert len(runs) == 8
    one = runs[0]
    assert {"method", "task", "seed", "shots"} <= set(one.data.params) and "accuracy" in one.data.metrics
    assert "prompt/prompt.json" in {f.path for f in client.list_artifacts(one.info.run_id, "prompt")}

    # the report: mean ± std and CI per method x task, claims judged, plots; the HTML renders in Chromium
    report = build_report(tmp_path / "local.db")
    assert report.rows == ["zero-shot", "prompt-tuning"] and report.columns == ["sst2", "trec"]
    stat = report.cells[("prompt-tuning", "trec")]
    assert stat.n == 2 and stat.ci95 is not None and stat.ci95[0] <= stat.mean <= stat.ci95[1]
    store = ResultStore(tmp_path / "local.db")
    done = store.rows("done")
    for p in report.points:  # the wall-time plot places each (method, task) at that task's own mean seconds
        own = [r["wall_seconds"] for r in done if (r["label"], Path(r["task"]).stem) == (p["row"], p["task"])]
        assert len(own) == 2 and p["seconds"] == pytest.approx(sum(own) / 2)
    store.close()
    verdicts = {c["claim"]: c["verdict"] for c in report.claims}
    assert verdicts["a method main does not have"] == "not yet runnable"
    assert verdicts["prompt tuning beats zero-shot"] in ("reproduced", "not reproduced")
    paths = write_report(report, tmp_path / "report")
    md = paths["markdown"].read_text()
    assert "| zero-shot |" in md and "accuracy_vs_params.png" in md
    assert (tmp_path / "report/accuracy_vs_shots.png").stat().st_size > 5000
    _check_in_browser(request.getfixturevalue("chromium"), paths["html"], tmp_path / "report.png")


def _check_in_browser(chromium: str, html: Path, screenshot: Path) -> None:
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(html.as_uri())
        page.screenshot(path=str(screenshot), full_page=True)
        rows = page.locator("#results tr").count()
        cells = page.locator("#results td").all_inner_texts()
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
        verdicts = page.locator("#claims td").all_inner_texts()
        browser.close()
    assert rows == 3 and "prompt-tuning" in cells and any("±" in c for c in cells)
    assert len(widths) == 3 and all(w > 100 for w in widths), widths  # the three plots decoded and laid out
    assert "not yet runnable" in verdicts
    assert screenshot.stat().st_size > 20_000


def test_killed_bench_reruns_only_the_missing_cells(tmp_path, data_dir):
    grid = _write(tmp_path / "grid.yaml", f"""
models: [smollm2-135m]
tasks: [sst2, trec]
data_dir: {data_dir}
shots: [4]
seeds: [0, 1, 2]
eval_limit: 24
methods: [zero-shot]
""")
    db = tmp_path / "runs.db"
    cmd = [str(BIN / "prompttune"), "bench", str(grid), "--db", str(db)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    deadline = time.time() + 300
    first: dict[str, float] = {}
    while time.time() < deadline and proc.poll() is None:
        rows = _runs_once_created(db)
        if rows is not None:
            done = {k: f for k, s, f in rows if s == "done"}
            if len(done) >= 2 and any(s == "running" for _, s, _ in rows):
                os.killpg(proc.pid, signal.SIGKILL)  # mid-cell: one is running, the rest pending
                first = done
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert first, "the bench finished or stalled before it could be killed midway"
    assert 2 <= len(first) < 6

    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"runs=6 done={6 - len(first)} failed=0 skipped={len(first)}"
    with sqlite3.connect(db) as conn:
        rows = {k: (s, f, a) for k, s, f, a in conn.execute("SELECT key, status, finished, attempts FROM runs")}
    assert all(s == "done" for s, _, _ in rows.values())
    assert all(rows[k][1] == f and rows[k][2] == 1 for k, f in first.items())  # finished cells were not re-run
    assert sorted(a for _, _, a in rows.values()).count(2) == 1  # the cell killed mid-run ran a second time


def _runs_once_created(db: Path) -> list[tuple] | None:
    """(key, status, finished) of every cell, or None while the bench has not yet created its `runs` table
    (the database file exists a moment before its schema does)."""
    if not db.exists():  # checked first: connecting would create the file
        return None
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='runs'").fetchone() is None:
            return None
        return conn.execute("SELECT key, status, finished FROM runs").fetchall()


def _tiny_grid(path: Path, model: Path, data_dir: Path, tasks: str, seeds: str) -> Path:
    return _write(path, f"models: [{model}]\ntasks: [{tasks}]\ndata_dir: {data_dir}\nshots: [2]\n"
                        f"seeds: [{seeds}]\neval_limit: 16\nmethods: [zero-shot]")


def _wait_until_opened(procs: list[subprocess.Popen], db: Path, timeout: float = 240) -> None:
    """Until every process has `db` open (then each is at its first write, which the test's lock holds)."""
    target, deadline = os.path.realpath(db), time.time() + timeout
    waiting = set(range(len(procs)))
    while waiting and time.time() < deadline:
        for i in list(waiting):
            assert procs[i].poll() is None, procs[i].communicate()[1][-3000:]
            fds = Path(f"/proc/{procs[i].pid}/fd")
            try:
                if any(os.path.realpath(fd) == target for fd in fds.iterdir()):
                    waiting.discard(i)
            except FileNotFoundError:  # a descriptor closed while we looked
                pass
        time.sleep(0.05)
    assert not waiting, "the bench processes did not open the database"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see the processes open the database")
def test_two_bench_processes_on_one_database_run_each_cell_once(tmp_path, data_dir, tiny_llama_dir):
    grid = _tiny_grid(tmp_path / "grid.yaml", tiny_llama_dir, data_dir, "sst2, trec", "0, 1, 2")
    db = tmp_path / "runs.db"
    ResultStore(db).close()
    # The gate: the test holds the write lock while both benches start, so both find every cell pending and
    # race for the same cells from the same moment.
    gate = sqlite3.connect(db, isolation_level=None)
    gate.execute("BEGIN IMMEDIATE")
    cmd = [str(BIN / "prompttune"), "bench", str(grid), "--db", str(db)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    try:
        _wait_until_opened(procs, db)
    finally:
        gate.execute("COMMIT")
        gate.close()
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    ran = []
    for out, _ in outs:
        fields = dict(f.split("=") for f in out.strip().splitlines()[-1].split())
        assert fields["runs"] == "6" and fields["failed"] == "0" and int(fields["done"]) + int(fields["skipped"]) == 6
        ran.append(int(fields["done"]))
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT status, attempts, owner FROM runs").fetchall()
    assert len(rows) == 6 and all(s == "done" for s, _, _ in rows)
    assert [a for _, a, _ in rows] == [1] * 6, rows  # no cell ran twice
    assert sum(ran) == 6 and min(ran) >= 1, ran  # each bench ran its share
    assert len({o for _, _, o in rows}) == 2


def test_a_stale_claim_is_taken_over_and_a_live_one_is_not(tmp_path, data_dir, tiny_llama_dir):
    grid = load_grid(_tiny_grid(tmp_path / "grid.yaml", tiny_llama_dir, data_dir, "sst2", "0, 1, 2, 3"))
    db = tmp_path / "runs.db"
    store = ResultStore(db)
    cells = grid.cells()
    store.add_cells(cells)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale_after, now = 3.0, time.time()
    held = {  # cells left `running` by other benches
        cells[0].key: ("far-host:4242:silent", now - 600),  # no heartbeat for 10 minutes
        cells[1].key: (f"{socket.gethostname()}:{gone.pid}:dead", now),  # fresh heartbeat, but its process is gone
        cells[2].key: ("far-host:4243:alive", now),  # alive until its heartbeat is `stale_after` old
    }
    for key, (owner, beat) in held.items():
        store._conn.execute("UPDATE runs SET status='running', attempts=1, owner=?, heartbeat=?, started=? "
                            "WHERE key=?", (owner, beat, beat, key))

    # cell 3: claimed by a bench whose heartbeat keeps the claim fresh while it runs, and stops with it
    assert store.claim(cells[3].key, "far-host:4244:beating") == 1
    heartbeat = "SELECT heartbeat FROM runs WHERE key=?"
    with Heartbeat(db, "far-host:4244:beating", interval=0.05):
        time.sleep(0.5)
    last_beat = store._conn.execute(heartbeat, (cells[3].key,)).fetchone()[0]
    assert last_beat > now + 0.3
    time.sleep(0.2)
    assert store._conn.execute(heartbeat, (cells[3].key,)).fetchone()[0] == last_beat

    summary = run_grid(grid, db, heartbeat_s=0.2, stale_after_s=stale_after, poll_s=0.2)
    assert summary.line() == "runs=4 done=4 failed=0 skipped=0"
    rows = {key: (status, attempts, started, owner) for key, status, attempts, started, owner in store._conn.execute(
        "SELECT key, status, attempts, started, owner FROM runs")}
    store.close()
    assert all(status == "done" for status, *_ in rows.values())
    assert [rows[c.key][1] for c in cells] == [2, 2, 2, 2]  # each claim taken over once
    assert len({rows[c.key][3] for c in cells}) == 1  # by this bench
    for live, since in ((cells[2], now), (cells[3], last_beat)):  # left alone until their heartbeat went stale
        assert rows[live.key][2] >= since + stale_after


def test_data_parallel_training_matches_one_process(tmp_path, data_dir):
    """`accelerate launch` with 2 CPU processes (gloo) learns the prompt one process learns on the same global batch."""
    args = ["train", "--method", "prompt-tuning", "--task", "sst2", "--data-dir", str(data_dir), "--shots", "4",
            "--steps", "4", "--batch-size", "8", "-p", "eval_every=4", "--eval-limit", "8", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([str(BIN / "prompttune"), *args, "--out", str(tmp_path / "one")], capture_output=True,
                            text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", str(BIN / "prompttune")]
    ddp = subprocess.run([*launch, *args, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads((tmp_path / "one/prompt.json").read_text())
    two = json.loads((tmp_path / "two/prompt.json").read_text())
    assert one["info"]["best_step"] == two["info"]["best_step"] == 4  # the trained prompt, not the initial one
    losses = [[h["loss"] for h in m["history"] if "loss" in h] for m in (one, two)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4) and losses[0][-1] < losses[0][0]
    a = load_file(str(tmp_path / "one/prompt.safetensors"))["prompt"]
    b = load_file(str(tmp_path / "two/prompt.safetensors"))["prompt"]
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert not list((tmp_path / "two").glob("checkpoint*"))


def test_a_failing_cell_is_retried_then_recorded_failed(tmp_path, data_dir, backbone, monkeypatch):
    grid = load_grid(_write(tmp_path / "grid.yaml", f"""
models: [smollm2-135m]
tasks: [sst2]
data_dir: {data_dir}
shots: [2]
seeds: [0, 1]
eval_limit: 8
retries: 2
methods: [zero-shot]
"""))
    bench_runner._BACKBONES[("text", "smollm2-135m")] = backbone
    real, calls = bench_runner.run_cell, []

    def flaky(config, run_dir, threads=None):  # seed 0 fails once then works; seed 1 always fails
        calls.append(config["seed"])
        if config["seed"] == 1 or calls.count(0) == 1:
            raise RuntimeError(f"worker lost (seed {config['seed']})")
        return real(config, run_dir, threads)

    monkeypatch.setattr(bench_runner, "run_cell", flaky)
    summary = run_grid(grid, tmp_path / "runs.db")
    assert summary.line() == "runs=2 done=1 failed=1 skipped=0"
    assert calls.count(0) == 2 and calls.count(1) == 3  # 1 + retries attempts for the one that keeps failing
    with sqlite3.connect(tmp_path / "runs.db") as conn:
        rows = {seed: (status, attempts, error) for seed, status, attempts, error in conn.execute(
            "SELECT seed, status, attempts, error FROM runs")}
    assert rows[0][:2] == ("done", 2) and rows[1][:2] == ("failed", 3) and "worker lost (seed 1)" in rows[1][2]


def test_a_method_declares_its_extra_figures_and_each_method_loads_tasks_of_its_kind(tmp_path, data_dir,
                                                                                    tiny_llama_dir):
    """select's oracle comes from the method (`extra_metrics`), not from the bench; a grid whose task is not of
    a method's kind names the method, its kind and the tasks."""
    candidates = ["{sentence} It was", "Review: {sentence}\nSentiment:", "{sentence}\nDid they like it? Answer:"]
    grid = load_grid(_write(tmp_path / "grid.yaml", f"""
models: [{tiny_llama_dir}]
tasks: [sst2]
data_dir: {data_dir}
shots: [2]
seeds: [0]
eval_limit: 8
methods:
  - {{name: select, candidates: {json.dumps(candidates)}}}
claims:
  - {{claim: selection finds the best candidate, close_to_oracle: select, tolerance: 1.0}}
"""))
    assert run_grid(grid, tmp_path / "runs.db").line() == "runs=1 done=1 failed=0 skipped=0"
    row = ResultStore(tmp_path / "runs.db").rows("done")[0]
    m = row["metrics"]
    assert len(m["candidates_accuracy"]) == 3 and m["oracle_accuracy"] == max(m["candidates_accuracy"])
    assert row["accuracy"] == m["eval"]["accuracy"] == m["picked_accuracy"] and row["eval_size"] == m["eval"]["n"]
    assert row["dev_accuracy"] == m["dev"]["accuracy"] and row["macro_f1"] == m["eval"]["macro_f1"]
    claim = build_report(tmp_path / "runs.db").claims[0]
    assert claim["verdict"] == "reproduced" and "oracle − picked" in claim["evidence"], claim

    bad = _write(tmp_path / "bad.yaml", f"models: [{tiny_llama_dir}]\ntasks: [sst2, trec]\ndata_dir: {data_dir}\n"
                                        "shots: [2]\nseeds: [0]\nmethods: [zero-shot, zero-shot-clip]")
    with pytest.raises(ConfigError, match=r"bad.yaml:6: methods\[1\]: method 'zero-shot-clip' needs a clip task; "
                                          r"task\(s\) sst2, trec are not of kind 'clip'"):
        load_grid(bad)


MIXED_GRID = """
models: [smollm2-135m]
tasks: [sst2, "ii:singular_to_plural"]
data_dir: {data}
shots: [8]
seeds: [0]
eval_limit: 8
methods:
  - zero-shot
  - {{name: prompt-tuning, steps: 4, eval_every: 4, n_tokens: 4}}
claims:
  - {{claim: prompt tuning beats zero-shot, better: prompt-tuning, than: zero-shot}}
"""


@pytest.fixture
def one_thread():
    """One torch thread for the test: greedy decoding's many small matmuls on two threads of a busy
    2-core machine ran ten times slower than on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_grid_mixes_classification_and_generative_tasks_each_scored_by_its_primary_metric(tmp_path, data_dir,
                                                                                            backbone, one_thread):
    """One grid, one runner path: sst2 is scored by accuracy and ii:singular_to_plural by exact match; the
    store names each row's metric, the report heads each task's column with it and claims compare it."""
    grid = load_grid(_write(tmp_path / "grid.yaml", MIXED_GRID.format(data=data_dir)))
    bench_runner._BACKBONES[("text", "smollm2-135m")] = backbone
    db = tmp_path / "runs.db"
    assert run_grid(grid, db).line() == "runs=4 done=4 failed=0 skipped=0"
    rows = ResultStore(db).rows("done")
    by_task = {(r["label"], r["task"]): r for r in rows}
    for (label, task), row in by_task.items():
        metric = "accuracy" if task == "sst2" else "exact_match"
        assert row["metric"] == metric, (label, task, row["metric"])
        assert row["accuracy"] == row["metrics"]["eval"][metric] and row["eval_size"] == 8
        assert row["dev_accuracy"] == row["metrics"]["dev"][metric]
    assert by_task[("zero-shot", "ii:singular_to_plural")]["macro_f1"] is None

    report = build_report(db)
    assert report.columns == ["sst2", "ii:singular_to_plural"]
    assert report.metrics == {"sst2": "accuracy", "ii:singular_to_plural": "exact_match"}
    md = write_report(report, tmp_path / "report")["markdown"].read_text()
    assert "| method | sst2 (accuracy) | ii:singular_to_plural (exact_match) |" in md
    html = (tmp_path / "report/report.html").read_text()
    assert "<th>ii:singular_to_plural (exact_match)</th>" in html
    claim = report.claims[0]
    assert claim["verdict"] in ("reproduced", "not reproduced") and "2 settings" in claim["evidence"]
    assert "sst2 k=8 accuracy:" in claim["evidence"] and "ii:singular_to_plural k=8 exact_match:" in claim["evidence"]


def test_a_grid_refuses_a_method_that_cannot_learn_a_generative_task(tmp_path, data_dir):
    path = _write(tmp_path / "grid.yaml", f"models: [smollm2-135m]\ntasks: [sst2, 'ii:singular_to_plural']\n"
                                          f"data_dir: {data_dir}\nshots: [4]\nseeds: [0]\n"
                                          "methods: [zero-shot, prompt-boosting]")
    with pytest.raises(ConfigError, match=r"grid.yaml:6: methods\[1\]: method 'prompt-boosting' cannot learn a prompt "
                                          r"for generative task 'ii:singular_to_plural'"):
        load_grid(path)


OLD_SCHEMA = """
CREATE TABLE runs (key TEXT PRIMARY KEY, status TEXT NOT NULL, model TEXT, task TEXT, shots INTEGER, seed INTEGER,
    method TEXT, label TEXT, config TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, accuracy REAL, macro_f1 REAL,
    dev_accuracy REAL, eval_size INTEGER, metrics TEXT, trainable_parameters INTEGER, wall_seconds REAL,
    queries INTEGER, llm_calls INTEGER, artifact TEXT, versions TEXT, error TEXT, worker TEXT, started REAL,
    finished REAL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def test_a_database_from_before_metric_names_is_migrated_on_open(tmp_path):
    """Rows written before the `metric` column name what they stored: hm for base-to-new, else accuracy."""
    db = tmp_path / "old.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.executescript(OLD_SCHEMA)
        for key, task, acc, metrics in (("a", "sst2", 0.8, {"eval": {"accuracy": 0.8, "n": 8}}),
                                        ("b", "fashion", 0.5, {"eval": {"base": 0.6, "new": 0.4, "hm": 0.5}})):
            conn.execute("INSERT INTO runs (key, status, model, task, shots, seed, method, label, config, accuracy, "
                         "metrics, trainable_parameters, wall_seconds) VALUES (?, 'done', 'm', ?, 4, 0, 'coop', "
                         "'coop', '{}', ?, ?, 0, 1.0)", (key, task, acc, json.dumps(metrics)))
    store = ResultStore(db)
    assert {r["key"]: r["metric"] for r in store.rows()} == {"a": "accuracy", "b": "hm"}
    store.close()
    ResultStore(db).close()  # opening again finds nothing to migrate
    report = build_report(db)
    assert report.metrics == {"sst2": "accuracy", "fashion": "hm"}
    assert "fashion (hm)" in report.markdown_table()


def test_the_report_shows_the_metric_against_the_budget_spent(tmp_path):
    """Forward passes, optimiser-LLM calls and tokens: each row's mean in every table, "-" where a method spends
    none, and the metric plotted against forward passes and LLM tokens."""
    db = tmp_path / "budget.db"
    ResultStore(db).close()
    rows = (("a", 0, "zero-shot", 0.1, None, None, None), ("b", 0, "evolution", 0.3, 1200, None, None),
            ("c", 0, "ape", 0.4, 800, 12, 3000), ("d", 1, "ape", 0.5, 900, 14, 3400))
    with closing(sqlite3.connect(db)) as conn, conn:
        for key, seed, label, score, queries, calls, tokens in rows:
            conn.execute("INSERT INTO runs (key, status, model, task, shots, seed, method, label, config, metric, "
                         "accuracy, metrics, trainable_parameters, wall_seconds, queries, llm_calls, llm_tokens) "
                         "VALUES (?, 'done', 'm', 'ii:antonyms', 8, ?, ?, ?, '{}', 'exact_match', ?, '{}', 0, 1.0, "
                         "?, ?, ?)", (key, seed, label, label, score, queries, calls, tokens))
    report = build_report(db)
    assert report.budget["ape"] == {"queries": 850, "llm_calls": 13, "llm_tokens": 3200}
    assert report.budget["evolution"] == {"queries": 1200, "llm_calls": None, "llm_tokens": None}
    assert report.budget["zero-shot"] == {"queries": None, "llm_calls": None, "llm_tokens": None}
    md = write_report(report, tmp_path / "report")["markdown"].read_text()
    assert "| trainable params | s / run | forward passes | LLM calls | LLM tokens |" in md
    assert "| 0 | 1.0 | 850 | 13 | 3,200 |" in md and "| 0 | 1.0 | - | - | - |" in md
    assert "<th>forward passes</th>" in (tmp_path / "report/report.html").read_text()
    for plot in ("metric_vs_queries", "metric_vs_llm_tokens"):
        assert (tmp_path / f"report/{plot}.png").stat().st_size > 5000

"""Running a grid: each cell is one `prompttune.train` call; executors spread the cells.

The driver owns the SQLite store: workers (in-process, worker processes or Ray tasks) only run
`run_cell` and hand back a plain dict, so the results land in one file whichever executor ran them.
Several drivers may share one store: each claims a cell before running it (see `store.py`).
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import ConfigError, PromptTuneError
from ..utils.env import quiet_libraries
from .grid import Cell, Grid
from .store import Heartbeat, ResultStore, new_owner

_BACKBONES: dict[tuple[str, str], Any] = {}  # one loaded model per worker process and kind, reused by its cells


@dataclass
class BenchSummary:
    runs: int
    done: int
    failed: int
    skipped: int

    def line(self) -> str:
        return f"runs={self.runs} done={self.done} failed={self.failed} skipped={self.skipped}"


def _backbone(method: str, model: str) -> Any:
    """The worker's loaded model, loaded through the method's kind (a language model, a CLIP model, ...)."""
    from ..kinds import kind_for
    from ..methods import get_method

    kind = kind_for(get_method(method).backbone_kinds, method, model)
    key = (kind.name, model)
    if key not in _BACKBONES:
        _BACKBONES[key] = kind.load_backbone(model, "auto", "auto")
    return _BACKBONES[key]


def run_cell(config: dict[str, Any], run_dir: str, threads: int | None = None) -> dict[str, Any]:
    """Train and score one cell; returns what the store records. Resumes from a checkpoint in `run_dir`.
    The same for every method, kind and task: "metric" names the run's primary metric (accuracy for a
    classifier, the base/new harmonic mean for a base-to-new image task, the task's first metric, e.g.
    exact_match, for a generative one) and "accuracy" / "dev_accuracy" hold its held-out and dev values
    (the column names predate generative tasks). The method's declared extra figures (e.g. select's
    oracle) go into "metrics" beside the dev and held-out scores."""
    import torch

    from .. import api

    if threads:
        torch.set_num_threads(threads)
    quiet_libraries()
    started = time.perf_counter()
    report = api.train(
        config["method"], _backbone(config["method"], config["model"]), config["task"], config["data_dir"],
        config["shots"], config["seed"], run_dir, dev_shots=config["dev_shots"], eval_split=config["eval_split"],
        eval_limit=config["eval_limit"], resume=True, progress=False, extra_metrics=True, **config["params"],
    )
    meta = report.meta
    info = meta.get("info", {})
    recorded = meta["metrics"]
    scored = recorded.get("eval") or recorded.get("dev", {})
    metrics = {k: recorded[k] for k in ("dev", "eval") if k in recorded} | recorded.get("extra", {})
    llm = info.get("llm_calls")
    llm_use = info.get("llm") if isinstance(info.get("llm"), dict) else {}
    llm_tokens = (llm_use.get("prompt_tokens", 0) + llm_use.get("completion_tokens", 0)) if llm_use else None
    return {
        "metric": report.primary_metric, "accuracy": report.score, "macro_f1": scored.get("macro_f1"),
        "dev_accuracy": recorded.get("dev", {}).get(report.primary_metric), "eval_size": scored.get("n"),
        "trainable_parameters": meta["trainable_parameters"],
        "wall_seconds": round(time.perf_counter() - started, 2), "queries": info.get("queries_used"),
        "llm_calls": len(llm) if isinstance(llm, list) else llm, "llm_tokens": llm_tokens,
        "artifact": str(report.out_dir),
        "metrics": metrics, "versions": meta["versions"], "worker": f"{os.uname().nodename}:{os.getpid()}",
    }


def _describe(cell: Cell) -> str:
    return f"{cell.method.label} | {Path(cell.task).stem} | {cell.model} | k={cell.shots} seed={cell.seed}"


class _Claims:
    """The cells this bench sees through, claimed in order just before each runs. A cell that another
    live bench holds is looked at again every `poll_s` seconds until that bench finishes it (this one
    then skips it) or its claim goes stale (this one takes it over)."""

    def __init__(self, cells: list[Cell], store: ResultStore, owner: str, since: float, stale_after: float,
                 poll_s: float, console: Console):
        self.queue, self.held_elsewhere = list(cells), []
        self.store, self.owner, self.since, self.stale_after, self.poll_s = store, owner, since, stale_after, poll_s
        self.console = console
        self._next_look = 0.0
        self._told: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.queue or self.held_elsewhere)

    def retry(self, cell: Cell) -> None:
        self.queue.insert(0, cell)  # still ours: claiming it again only counts the attempt

    def next(self, worker: str) -> tuple[Cell, int] | None:
        """The next cell to run here and its attempt number; None when none is claimable now."""
        if not self.queue and self.held_elsewhere and time.monotonic() >= self._next_look:
            self.queue, self.held_elsewhere = self.held_elsewhere, []
        while self.queue:
            cell = self.queue.pop(0)
            attempt = self.store.claim(cell.key, self.owner, worker, self.since, self.stale_after)
            if attempt is not None:
                return cell, attempt
            if self.store.status(cell.key) not in ("done", "failed"):
                self.held_elsewhere.append(cell)
                if cell.key not in self._told:
                    self._told.add(cell.key)
                    self.console.print(f"  [yellow]held[/] by another bench ({self.store.holder(cell.key)}), "
                                       f"waiting: {_describe(cell)}", highlight=False)
            if not self.queue:
                self._next_look = time.monotonic() + self.poll_s
        return None

    def wait(self) -> None:
        """Sleep until the cells held elsewhere are due another look."""
        time.sleep(max(0.0, self._next_look - time.monotonic()))


def run_grid(
    grid: Grid,
    db: str | Path = "runs.db",
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
    retries: int | None = None,
    mlflow_uri: str | None = None,
    console: Console | None = None,
    on_result: Callable[[Cell, dict[str, Any] | None], None] | None = None,
    heartbeat_s: float = 10.0,
    stale_after_s: float = 60.0,
    poll_s: float = 2.0,
) -> BenchSummary:
    """Run every cell of `grid` not yet done in `db`; returns the counts of the final line.

    Other benches on the same `db` may run at the same time: a cell another bench holds is left to it
    (counted skipped once it finishes there), and taken over when that bench stops beating its heartbeat
    (every `heartbeat_s`) for `stale_after_s` seconds or its process is gone."""
    if executor not in ("local", "ray"):
        raise ConfigError(f"--executor {executor!r}: expected local or ray")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    since = time.time()
    console = console or Console(stderr=True)
    store = ResultStore(db)
    runs_dir = Path(grid.runs_dir or f"{Path(db).with_suffix('')}.runs")
    cells = grid.cells()
    store.add_cells(cells)
    store.set_meta("claims", grid.claims)
    store.set_meta("grid", str(grid.path))
    todo = [c for c in cells if store.status(c.key) != "done"]
    skipped = len(cells) - len(todo)
    owner = new_owner()
    claims = _Claims(todo, store, owner, since, stale_after_s, poll_s, console)
    max_attempts = 1 + (grid.retries if retries is None else retries)
    logger = _mlflow_logger(mlflow_uri, grid) if mlflow_uri else None
    counts = {"done": 0, "failed": 0}
    console.print(f"[bold]{len(cells)}[/] runs in the grid, {skipped} already done, {len(todo)} to run "
                  f"({executor} executor) -> {db}")

    def record(cell: Cell, result: dict[str, Any] | None, error: str | None, attempt: int) -> bool:
        """Store one attempt's outcome; True when the cell should be tried again."""
        if result is not None:
            if not store.finish(cell.key, result, owner):
                console.print(f"  [yellow]taken over[/] by another bench while running, its result stands: "
                              f"{_describe(cell)}", highlight=False)
                return False
            counts["done"] += 1
            progress = f"{counts['done'] + counts['failed']}/{len(todo)}"
            console.print(f"  [green]done[/] {progress}  {_describe(cell)}  "
                          f"{result['metric']}={result['accuracy']:.3f} ({result['wall_seconds']:.0f}s)",
                          highlight=False)
            if logger:
                try:
                    logger(cell, result)
                except Exception as exc:  # noqa: BLE001 - the store has the result; a tracking server hiccup must not stop the grid
                    console.print(f"  [yellow]mlflow[/] could not log {_describe(cell)}: {exc}", highlight=False)
            if on_result:
                on_result(cell, result)
            return False
        if attempt < max_attempts:
            console.print(f"  [yellow]retry[/] {_describe(cell)} (attempt {attempt} of {max_attempts}): "
                          f"{(error or '').strip().splitlines()[-1]}")
            return True
        if not store.fail(cell.key, error or "unknown error", owner):
            return False
        counts["failed"] += 1
        last_line = (error or "").strip().splitlines()[-1]
        progress = f"{counts['done'] + counts['failed']}/{len(todo)}"
        console.print(f"  [red]failed[/] {progress}  {_describe(cell)}: {last_line}", highlight=False)
        if on_result:
            on_result(cell, None)
        return False

    with Heartbeat(db, owner, heartbeat_s):
        if executor == "local" and workers <= 1:
            _run_here(claims, runs_dir, max_attempts, record)
        elif executor == "local":
            _run_pool(claims, runs_dir, workers, record)
        else:
            _run_ray(claims, runs_dir, grid, address, record)
    store.close()
    return BenchSummary(len(cells), counts["done"], counts["failed"], len(cells) - counts["done"] - counts["failed"])


def _run_here(claims: _Claims, runs_dir: Path, max_attempts: int, record) -> None:
    """One cell after another in this process (the model stays loaded between them)."""
    while claims:
        got = claims.next("local")
        if got is None:
            claims.wait()
            continue
        cell, attempt = got
        result, error = None, None
        try:
            result = run_cell(cell.config, str(runs_dir / cell.key))
        except PromptTuneError as exc:  # bad input: the same next time, no point retrying
            error, attempt = f"{type(exc).__name__}: {exc}", max_attempts
        except Exception:  # noqa: BLE001 - a run's failure is recorded, the grid goes on
            error = traceback.format_exc()
        if record(cell, result, error, attempt):
            claims.retry(cell)


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_pool(claims: _Claims, runs_dir: Path, workers: int, record) -> None:
    """N worker processes (spawned: torch and fork do not mix); a dead worker's cell is retried."""
    import multiprocessing as mp
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // workers)

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                   initargs=(threads,))

    pool = new_pool()
    running: dict[Any, tuple[Cell, int]] = {}
    try:
        while claims or running:
            while len(running) < workers and (got := claims.next("process")) is not None:
                cell, attempt = got
                running[pool.submit(run_cell, cell.config, str(runs_dir / cell.key))] = (cell, attempt)
            if not running:
                claims.wait()
                continue
            finished, _ = wait(list(running), timeout=claims.poll_s if claims else None,
                               return_when=FIRST_COMPLETED)
            broken = False
            for fut in finished:
                cell, attempt = running.pop(fut)
                try:
                    result, error = fut.result(), None
                except BrokenProcessPool:
                    result, error, broken = None, "worker process died (killed or out of memory)", True
                except PromptTuneError as exc:
                    result, error, attempt = None, f"{type(exc).__name__}: {exc}", 10**9
                except Exception as exc:  # noqa: BLE001
                    result, error = None, "".join(traceback.format_exception(exc))
                if record(cell, result, error, attempt):
                    claims.retry(cell)
            if broken:  # every other future of a broken pool is lost too: requeue them and start over
                for fut, (cell, _attempt) in running.items():
                    fut.cancel()
                    claims.retry(cell)
                running.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                pool = new_pool()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(claims: _Claims, runs_dir: Path, grid: Grid, address: str | None, record) -> None:
    """Each cell a Ray task with the grid's per-run resources; results come back to this driver."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'prompttune[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    cpus, gpus = grid.resources.get("cpus", 1), grid.resources.get("gpus", 0)
    remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(run_cell)
    running: dict[Any, tuple[Cell, int]] = {}
    while claims or running:
        while (got := claims.next("ray")) is not None:
            cell, attempt = got
            running[remote.remote(cell.config, str((runs_dir / cell.key).resolve()), max(1, int(cpus)))] = (
                cell, attempt)
        if not running:
            claims.wait()
            continue
        ready, _ = ray.wait(list(running), num_returns=1, timeout=claims.poll_s if claims else None)
        for ref in ready:
            cell, attempt = running.pop(ref)
            try:
                result, error = ray.get(ref), None
            except Exception as exc:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, ...
                cause = getattr(exc, "cause", None)
                if isinstance(cause, PromptTuneError):
                    result, error, attempt = None, f"{type(cause).__name__}: {cause}", 10**9
                else:
                    result, error = None, str(exc)
            if record(cell, result, error, attempt):
                claims.retry(cell)


def _mlflow_logger(uri: str, grid: Grid):
    """Log every finished cell as an MLflow run: params, metrics and the artifact directory."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError("--mlflow needs MLflow: pip install 'prompttune[mlflow]'") from None
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(f"prompttune-{grid.path.stem}")

    def log(cell: Cell, result: dict[str, Any]) -> None:
        name = f"{cell.method.label}/{Path(cell.task).stem}/k{cell.shots}/s{cell.seed}"
        with mlflow.start_run(run_name=name, tags={"prompttune.key": cell.key}):
            params = {k: v for k, v in cell.config.items() if k != "params"}
            params.update({f"hp.{k}": v for k, v in cell.method.params.items()})
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            mlflow.log_param("metric", result["metric"])
            mlflow.log_metrics({k: float(result[k]) for k in ("accuracy", "macro_f1", "dev_accuracy",
                                                               "wall_seconds", "trainable_parameters")
                                if result.get(k) is not None} | {result["metric"]: float(result["accuracy"])})
            mlflow.log_artifacts(result["artifact"], artifact_path="prompt")

    return log

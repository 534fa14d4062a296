"""Soft-prompt methods on generative tasks: instruction induction and MIT Movies slot filling, one frozen SmolLM2-135M.

For each method x task: the task's primary metric on held-out examples (exact_match for most `ii:` tasks,
f1 for `mit-movies:` slots; greedy generation), mean ± std over the seeds, trainable parameters and
seconds per run. Every soft method that trains on generative tasks runs with the same small CPU budget.
Prompt transfer and MPT take their source prompt from this run's own prompt-tuning run on the *next*
task of --tasks (same seed), so they start from a prompt learned on another generative task.
Each finished run is kept in --results (JSON), so an interrupted benchmark picks up where it stopped.

Last line: generative_tasks=<t> soft_methods=<m> beating_zero_shot=<k>, where a method counts when its
mean over the seeds beats zero-shot's on at least 3 tasks (on every task when fewer are given).

    python benchmarks/generative_methods.py                                        # the full table
    python benchmarks/generative_methods.py --seeds 0 --methods prompt-tuning lopt  # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import prompttune
from prompttune.models import load_backbone

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TASKS = ["ii:singular_to_plural", "ii:antonyms", "ii:first_word_letter", "mit-movies:director"]
SOFT_METHODS = ["prompt-tuning", "residual-prompt-tuning", "lopt", "p-tuning", "p-tuning-v2", "prefix-tuning",
                "dept", "xprompt", "instance-prompt", "prompt-transfer", "multitask-prompt-tuning"]
NEEDS_SOURCE = {"prompt-transfer", "multitask-prompt-tuning"}  # they start from prompt-tuning's artifacts
BEAT_ON = 3  # tasks a method must beat zero-shot on to count


def source_task(task: str, tasks: list[str]) -> str:
    """The generative task whose prompt-tuning artifact seeds transfer and MPT on `task`: the next one."""
    return tasks[(tasks.index(task) + 1) % len(tasks)]


def params_for(method: str, task: str, seed: int, args, work: Path) -> dict:
    """The method's hyper-parameters for this budget (zero-shot has none)."""
    if method == "zero-shot":
        return {}
    params: dict = {"steps": args.steps, "eval_every": max(1, args.steps // 2)}
    source = str(work / f"prompt-tuning-{source_task(task, args.tasks)}-{seed}")
    if method == "prompt-transfer":
        params["source"] = source
    if method == "multitask-prompt-tuning":
        params.update(sources=[source], distill_steps=max(1, args.steps // 2))
    if method == "xprompt":
        params["retrain_steps"] = max(1, args.steps // 2)
    return params


def run_one(method: str, backbone, task: str, seed: int, args, work: Path) -> dict:
    report = prompttune.train(method, backbone, task, args.data_dir, shots=args.shots, seed=seed,
                              out=work / f"{method}-{task}-{seed}", overwrite=True, eval_limit=args.eval_limit,
                              progress=False, **params_for(method, task, seed, args, work))
    return {"score": report.score, "metric": report.primary_metric, "n": (report.test or report.dev).n,
            "trainable": report.meta["trainable_parameters"], "seconds": round(report.seconds, 2)}


def plan_of(methods: list[str]) -> list[str]:
    """zero-shot first, then prompt-tuning whenever transfer or MPT need its artifacts, then the rest."""
    needs_pt = bool(NEEDS_SOURCE & set(methods))
    ordered = ["zero-shot"] + ["prompt-tuning"] * (needs_pt or "prompt-tuning" in methods) + methods
    return list(dict.fromkeys(ordered))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--shots", type=int, default=16, help="training examples drawn per run (and as many dev)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--eval-limit", type=int, default=50, help="held-out test examples scored per run")
    parser.add_argument("--methods", nargs="+", default=SOFT_METHODS, help="soft methods (zero-shot always runs)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-generative"))
    parser.add_argument("--results", type=Path, default=None, help="default: <work>/results.json")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--report-only", action="store_true", help="print the table of what --results holds")
    args = parser.parse_args()
    if len(set(args.tasks)) < 2 and NEEDS_SOURCE & set(args.methods):
        parser.error("prompt-transfer and multitask-prompt-tuning need a second task for their source prompt")
    return args


def run_all(args, plan: list[str], results: dict, results_path: Path) -> None:
    """Every missing (method, task, seed), seed-major so each method gets seed 0 first; saved after each."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    backbone = load_backbone(args.model, device="cpu")
    for seed in args.seeds:
        for method in plan:
            for task in args.tasks:
                key = result_key(method, task, seed, args)
                if key in results:
                    continue
                results[key] = got = run_one(method, backbone, task, seed, args, work_dir(args))
                print(f"{method:26s} {task:24s} seed {seed}: {got['metric']} {got['score']:.3f} "
                      f"({got['seconds']:.1f}s)", flush=True)
                tmp = results_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(results, indent=1))
                tmp.replace(results_path)


def work_dir(args) -> Path:
    """Artifacts of one budget together: transfer and MPT read prompt-tuning's from the same budget."""
    return args.work / args.model.replace("/", "_") / f"k{args.shots}-s{args.steps}-n{args.eval_limit}"


def result_key(method: str, task: str, seed: int, args) -> str:
    return f"{method}|{task}|{seed}|{args.model}|{args.steps}|{args.shots}|{args.eval_limit}"


def print_table(args, plan: list[str], results: dict) -> None:
    def cell(method: str, task: str) -> list[dict]:  # the finished seeds of one (method, task)
        keys = [result_key(method, task, s, args) for s in args.seeds]
        return [results[k] for k in keys if k in results]

    metric = {t: next((c["metric"] for m in plan for c in cell(m, t)), "?") for t in args.tasks}
    need = min(BEAT_ON, len(args.tasks))
    print(f"\n{args.model}, {args.shots} shots, {args.steps} steps, seeds {args.seeds}, {args.eval_limit} held-out "
          f"examples; a method counts when it beats zero-shot on >= {need} tasks\n")
    header = "| method | " + " | ".join(f"{t} {metric[t]}" for t in args.tasks) + " | trainable | s/run |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    zero = {t: statistics.mean(c["score"] for c in cell("zero-shot", t)) for t in args.tasks if cell("zero-shot", t)}
    soft_rows = beating = 0
    for method in plan:
        cells = {t: cell(method, t) for t in args.tasks}
        if not any(cells.values()):
            print(f"| {method} | (not run yet) |")
            continue
        means = {t: statistics.mean(c["score"] for c in cs) for t, cs in cells.items() if cs}
        text = " | ".join(_mean_std(cells[t], len(args.seeds)) for t in args.tasks)
        runs = [c for cs in cells.values() for c in cs]
        print(f"| {method} | {text} | {runs[0]['trainable']:,} | {statistics.mean(c['seconds'] for c in runs):.1f} |")
        if method != "zero-shot":
            soft_rows += 1
            beating += sum(t in zero and means[t] > zero[t] for t in means) >= need
    print(f"generative_tasks={len(args.tasks)} soft_methods={soft_rows} beating_zero_shot={beating}")


def _mean_std(runs: list[dict], seeds: int) -> str:
    if not runs:
        return "-"
    scores = [c["score"] for c in runs]
    partial = f" (n={len(scores)})" if len(scores) < seeds else ""
    return f"{statistics.mean(scores):.3f} ± {statistics.pstdev(scores):.3f}{partial}"


def main() -> None:
    args = parse_args()
    work_dir(args).mkdir(parents=True, exist_ok=True)
    results_path = args.results or args.work / "results.json"
    results: dict = json.loads(results_path.read_text()) if results_path.exists() else {}
    plan = plan_of(args.methods)
    if not args.report_only:
        run_all(args, plan, results, results_path)
    print_table(args, plan, results)


if __name__ == "__main__":
    main()

"""Every soft-prompt method side by side: SST-2 and TREC, k=32, three seeds, one frozen SmolLM2-135M.

For each method x task: held-out accuracy mean ± std over the seeds, trainable parameters and
seconds per optimizer step (median time between steps, evaluation excluded). Prompt transfer and
MPT take their source prompts from this run's own prompt-tuning runs on the *other* task (same
seed). fine-tune-head runs on the MiniLM encoder and is compared with that encoder's zero-shot.
Each finished cell is kept in --results (JSON), so an interrupted run picks up where it stopped.

Last line: soft_methods=<n> beating_zero_shot=<m> (methods whose mean beats their zero-shot on
every task).

    python benchmarks/soft_methods.py --data-dir ../shared/data            # the full table
    python benchmarks/soft_methods.py --seeds 0 --steps 8 --eval-limit 50  # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import prompttune
from prompttune.models import load_backbone

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOFT_METHODS = ["prompt-tuning", "residual-prompt-tuning", "lopt", "p-tuning", "p-tuning-v2", "prefix-tuning",
                "dept", "xprompt", "instance-prompt", "prompt-transfer", "multitask-prompt-tuning"]
ENCODER_METHODS = ["fine-tune-head"]


def run_cell(method, backbone, task, seed, args, work: Path) -> dict:
    stamps: list[float] = []
    params: dict = {} if method == "zero-shot" else {"steps": args.steps, "eval_every": max(1, args.steps // 2)}
    other = "trec" if task == "sst2" else "sst2"
    if method == "prompt-transfer":
        params["source"] = str(work / f"prompt-tuning-{other}-{seed}")
    if method == "multitask-prompt-tuning":
        params.update(sources=[str(work / f"prompt-tuning-{other}-{seed}")], distill_steps=args.steps // 2)
    if method == "xprompt":
        params["retrain_steps"] = args.steps // 2
    report = prompttune.train(method, backbone, task, args.data_dir, shots=args.shots, seed=seed,
                              out=work / f"{method}-{task}-{seed}", overwrite=True, eval_limit=args.eval_limit,
                              progress=False, callbacks=[lambda step, loss: stamps.append(time.perf_counter())],
                              **params)
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"accuracy": report.test.accuracy, "trainable": report.meta["trainable_parameters"],
            "s_per_step": statistics.median(gaps) if gaps else 0.0, "seconds": report.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--tasks", nargs="+", default=["sst2", "trec"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--shots", type=int, default=32)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--eval-limit", type=int, default=300, help="held-out test examples scored per run")
    parser.add_argument("--methods", nargs="+", default=SOFT_METHODS + ENCODER_METHODS)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-soft"))
    parser.add_argument("--results", type=Path, default=None, help="default: <work>/results.json")
    parser.add_argument("--report-only", action="store_true", help="print the table of what --results holds")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results_path = args.results or args.work / "results.json"
    results: dict = json.loads(results_path.read_text()) if results_path.exists() else {}

    load = (lambda name: None) if args.report_only else (lambda name: load_backbone(name, device="cpu"))
    backbones = {"smollm2-135m": load("smollm2-135m")}
    if any(m in ENCODER_METHODS for m in args.methods):
        backbones["minilm-l6"] = load("minilm-l6")
    plan = []  # (row name, method, model); prompt-tuning first: transfer and MPT read its artifacts
    for model in backbones:
        plan.append((f"zero-shot ({model})", "zero-shot", model))
    needs_pt = {"prompt-transfer", "multitask-prompt-tuning"} & set(args.methods)
    for m in ["prompt-tuning"] * bool(needs_pt or "prompt-tuning" in args.methods) + args.methods:
        row = m if m in SOFT_METHODS else f"{m} (minilm-l6)"
        if (row, m) not in [(r, mm) for r, mm, _ in plan]:
            plan.append((row, m, "minilm-l6" if m in ENCODER_METHODS else "smollm2-135m"))
    for seed in [] if args.report_only else args.seeds:  # seed-major: every method gets seed 0 first
        for row, method, model in plan:
            for task in args.tasks:
                key = f"{row}|{task}|{seed}|{args.steps}|{args.shots}|{args.eval_limit}"
                if key in results:
                    continue
                work = args.work / model
                results[key] = run_cell(method, backbones[model], task, seed, args, work)
                print(f"{row:32s} {task:5s} seed {seed}: acc {results[key]['accuracy']:.3f} "
                      f"({results[key]['seconds']:.0f}s)", flush=True)
                tmp = results_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(results, indent=1))
                tmp.replace(results_path)

    def cell(row, task):  # the finished seeds of one cell (all of them unless --report-only on a partial run)
        keys = [f"{row}|{task}|{s}|{args.steps}|{args.shots}|{args.eval_limit}" for s in args.seeds]
        return [results[k] for k in keys if k in results]

    header = "| method | " + " | ".join(f"{t} acc (mean ± std)" for t in args.tasks) + " | trainable | s/step |"
    print(f"\nk={args.shots}, {args.steps} steps, seeds {args.seeds}, {args.eval_limit} held-out test examples\n")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    beating, soft_rows = 0, 0
    for row, method, model in plan:
        cells = {t: cell(row, t) for t in args.tasks}
        if not all(cells.values()):
            print(f"| {row} | (not run yet) |")
            continue
        accs = {t: [c["accuracy"] for c in cells[t]] for t in args.tasks}
        text = " | ".join(f"{statistics.mean(a):.3f} ± {statistics.pstdev(a):.3f}" + (f" (n={len(a)})" if len(a) < len(
            args.seeds) else "") for a in accs.values())
        trainable = cells[args.tasks[0]][0]["trainable"]
        s_step = statistics.mean(c["s_per_step"] for t in args.tasks for c in cells[t])
        print(f"| {row} | {text} | {trainable:,} | {s_step:.2f} |")
        if method != "zero-shot":
            soft_rows += 1
            zero = f"zero-shot ({model})"
            if all(cell(zero, t) and statistics.mean(accs[t]) > statistics.mean(c["accuracy"] for c in cell(zero, t))
                   for t in args.tasks):
                beating += 1
    print(f"soft_methods={soft_rows} beating_zero_shot={beating}")


if __name__ == "__main__":
    main()

"""Every discrete / black-box search side by side on SST-2, k=32, three seeds, one frozen SmolLM2-135M,
beside zero-shot and prompt tuning.

For each method: held-out accuracy mean ± std over the seeds, queries used (forward passes, one
prompt on one example each) and wall seconds per run. Every search gets the same `--budget`.
Each finished cell is kept in --results (JSON), so an interrupted run picks up where it stopped.

Last line: search_methods=<n> beating_zero_shot=<m> (searches whose mean beats zero-shot's).

    python benchmarks/search_methods.py --data-dir ../shared/data              # the full table
    python benchmarks/search_methods.py --seeds 0 --budget 1000 --eval-limit 100  # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import prompttune
from prompttune.models import load_backbone

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SEARCHES = [
    "random-separators",
    "autoprompt",
    "pez",
    "bbt",
    "edit-search",
    "evolution",
    "rlprompt",
    "prompt-boosting",
    "select",
]
SELECT_CANDIDATES = [
    "Review: {sentence}\nSentiment:",
    "{sentence}\nDid the reviewer like the movie? Answer:",
    "Movie review: {sentence}\nThe review is",
    "{sentence} All in all, the movie was",
    "Is the following review positive or negative?\n{sentence}\nAnswer:",
]


def params_for(method: str, args) -> dict:
    if method == "zero-shot":
        return {}
    if method == "prompt-tuning":
        return {"steps": args.steps, "eval_every": max(1, args.steps // 2)}
    if method == "pez":  # a gradient method: its budget is steps (queries are reported)
        return {"steps": args.steps, "eval_every": max(1, args.steps // 4)}
    if method == "select":
        return {"candidates": SELECT_CANDIDATES, "criterion": "mi"}
    return {"budget": args.budget}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--shots", type=int, default=32)
    parser.add_argument("--budget", type=int, default=3000, help="forward passes per search")
    parser.add_argument("--steps", type=int, default=32, help="prompt tuning and PEZ optimizer steps")
    parser.add_argument("--eval-limit", type=int, default=300, help="held-out test examples scored per run")
    parser.add_argument("--methods", nargs="+", default=["zero-shot", "prompt-tuning"] + SEARCHES)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-search"))
    parser.add_argument("--results", type=Path, default=None, help="default: <work>/results.json")
    parser.add_argument("--report-only", action="store_true", help="print the table of what --results holds")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results_path = args.results or args.work / "results.json"
    results: dict = json.loads(results_path.read_text()) if results_path.exists() else {}
    suffix = f"{args.task}|{args.shots}|{args.budget}|{args.steps}|{args.eval_limit}"

    backbone = None if args.report_only else load_backbone("smollm2-135m", device="cpu")
    for seed in [] if args.report_only else args.seeds:  # seed-major: every method gets seed 0 first
        for method in args.methods:
            key = f"{method}|{seed}|{suffix}"
            if key in results:
                continue
            report = prompttune.train(
                method,
                backbone,
                args.task,
                args.data_dir,
                shots=args.shots,
                seed=seed,
                out=args.work / f"{method}-{seed}",
                overwrite=True,
                eval_limit=args.eval_limit,
                progress=False,
                **params_for(method, args),
            )
            info = report.meta["info"]
            results[key] = {
                "accuracy": report.test.accuracy,
                "queries": info.get("queries_used", 0),
                "seconds": report.seconds,
                "prompt": report.meta.get("text_prompt"),
            }
            print(
                f"{method:18s} seed {seed}: acc {report.test.accuracy:.3f} queries {results[key]['queries']} "
                f"({report.seconds:.0f}s)",
                flush=True,
            )
            tmp = results_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1))
            tmp.replace(results_path)

    print(
        f"\n{args.task}, k={args.shots}, budget {args.budget} forward passes, seeds {args.seeds}, "
        f"{args.eval_limit} held-out test examples\n"
    )
    print("| method | accuracy (mean ± std) | queries used (mean) | wall s (mean) |")
    print("|---|---|---|---|")
    means = {}
    for method in args.methods:
        cells = [results[k] for s in args.seeds if (k := f"{method}|{s}|{suffix}") in results]
        if not cells:
            print(f"| {method} | (not run yet) | | |")
            continue
        accs = [c["accuracy"] for c in cells]
        means[method] = statistics.mean(accs)
        n = f" (n={len(cells)})" if len(cells) < len(args.seeds) else ""
        print(
            f"| {method} | {means[method]:.3f} ± {statistics.pstdev(accs):.3f}{n} | "
            f"{statistics.mean(c['queries'] for c in cells):,.0f} | "
            f"{statistics.mean(c['seconds'] for c in cells):.0f} |"
        )
    searches = [m for m in args.methods if m in SEARCHES and m in means]
    beating = sum(means[m] > means.get("zero-shot", 1.0) for m in searches)
    print(f"search_methods={len(searches)} beating_zero_shot={beating}")


if __name__ == "__main__":
    main()

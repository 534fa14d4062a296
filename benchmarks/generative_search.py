"""Soft, hard, LLM-driven and demonstration methods on the same generative tasks, budgets and seeds.

Runs `benchmarks/grids/generative-claims.yaml` through the benchmark runner (one frozen SmolLM2-135M, four
instruction-induction tasks, seeds 0-2; the optimiser LLM of ape and opro is the same model, in-process):
zero-shot, demos-random, demos-bootstrap, evolution, ape, opro, prompt tuning and random separators. For
each method x task: the task's primary metric on held-out examples (greedy generations), mean ± std over
the seeds, and the budget each run spent (forward passes, optimiser-LLM calls and tokens); then the
grid's claims (the seed papers' orderings) with their verdicts, and the report (Markdown, HTML, plots of
the metric against the budget) in --report.

Finished runs are kept in --db, so an interrupted benchmark picks up where it stopped.

Last line: generative_search_methods=<m> beating_zero_shot=<k>, where a method counts when its mean over
the seeds beats zero-shot's on at least 3 of the tasks (on every task when fewer are given).

    python benchmarks/generative_search.py                       # the full table (about an hour on 2 cores)
    python benchmarks/generative_search.py --report-only         # the table of what --db holds
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prompttune.bench import build_report, load_grid, run_grid, write_report

GRID = Path(__file__).resolve().parent / "grids" / "generative-claims.yaml"
BEAT_ON = 3  # tasks a method must beat zero-shot on to count


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, default=GRID)
    parser.add_argument("--db", type=Path, default=Path("runs/generative-search.db"))
    parser.add_argument("--report", type=Path, default=Path("runs/generative-search.report"))
    parser.add_argument("--workers", type=int, default=1, help="runs at once (each takes the cores / workers)")
    parser.add_argument("--report-only", action="store_true", help="print the table of what --db holds")
    return parser.parse_args()


def beating_zero_shot(report) -> list[str]:
    """Methods whose mean beats zero-shot's on at least BEAT_ON tasks (every task when there are fewer)."""
    need = min(BEAT_ON, len(report.columns))
    out = []
    for row in report.rows:
        if row == "zero-shot":
            continue
        wins = sum(1 for col in report.columns
                   if (row, col) in report.cells and ("zero-shot", col) in report.cells
                   and report.cells[(row, col)].mean > report.cells[("zero-shot", col)].mean)
        if wins >= need:
            out.append(row)
    return out


def main() -> None:
    args = parse_args()
    if not args.report_only:
        grid = load_grid(args.grid)
        print(run_grid(grid, args.db, workers=args.workers).line(), flush=True)
    report = build_report(args.db)
    paths = write_report(report, args.report, title="Generative search: soft, hard, LLM-driven and demonstrations")
    print(report.markdown_table())
    if report.claims:
        print()
        print(report.claims_markdown())
    print(f"\nreport: {paths['markdown']} and {paths['html']}")
    methods = [row for row in report.rows if row != "zero-shot"]
    beat = beating_zero_shot(report)
    print(f"beating zero-shot on >= {min(BEAT_ON, len(report.columns))} tasks: {', '.join(beat) or 'none'}")
    print(f"generative_search_methods={len(methods)} beating_zero_shot={len(beat)}")


if __name__ == "__main__":
    main()

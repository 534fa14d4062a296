"""What the command line prints about results: tables of scores, and the summary of a training run."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

SCORE_HEADERS = {"macro_f1": "macro-F1", "hm": "harmonic mean", "nll": "target NLL/token"}


def table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    out = Table(title=title)
    for col in columns:
        out.add_column(col)
    for row in rows:
        out.add_row(*row)
    return out


def scores_table(title: str, metrics: dict[str, Any]) -> Table:
    """One row per scored split; a column per metric, in recorded order (a generative task's primary metric
    first), a nested {accuracy, n} showing its accuracy, and a generative task's target NLL (per token,
    lower is better) last."""
    rows = {k: v for k, v in metrics.items() if k in ("dev", "eval")}
    skip = {"split", "n", "loss", "examples_per_s", "majority", "nll"}
    columns = list(dict.fromkeys(k for m in rows.values() for k in m if k not in skip))
    columns += ["nll"] if any("nll" in m for m in rows.values()) else []
    out = Table(title=title)
    for col in ("split", "examples", *columns):
        out.add_column(SCORE_HEADERS.get(col, col))
    for key, m in rows.items():
        name = "dev (k-shot, selection)" if key == "dev" else f"{m.get('split', 'eval')} (held out)"
        cells = [m.get(c, {}).get("accuracy") if isinstance(m.get(c), dict) else m.get(c) for c in columns]
        out.add_row(name, str(m.get("n", "")), *("" if v is None else f"{v:.4f}" for v in cells))
    return out


def print_train_result(console: Console, method: str, method_lines: list[str], report: Any) -> None:
    """What `prompttune train` prints: the method's own lines (the prompt found, queries spent), the scores,
    the size and time of the run, and each --port-to model's figure on the primary metric."""
    meta = report.meta
    for line in method_lines:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(scores_table(f"{method} on {meta['task']['name']} ({meta['backbone']['id']})", meta["metrics"]))
    console.print(f"trainable parameters: {meta['trainable_parameters']:,}  "
                  f"time: {report.seconds:.1f}s  artifact: {report.out_dir}")
    primary = meta.get("primary_metric", "accuracy")
    for port in meta.get("portability", []):
        console.print(f"on {port['model']}: {primary} {port[primary]:.4f} (plain template "
                      f"{port[f'template_{primary}']:.4f}, {port['n']} examples)", highlight=False)

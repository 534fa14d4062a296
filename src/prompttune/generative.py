"""Generative tasks at inference: the settings an artifact applies, batched greedy generation behind any
prompt kind, the task's metrics on the outputs, and the predictor of a generative artifact.

A generative task's answer is text: its template renders the input, the prompt goes in front, the
model continues greedily until a stop string (or `max_new_tokens`), and each of the task's metrics
compares that continuation with the acceptable answers. The held-out figure is always a metric on
generated text; the target's negative log-likelihood (per token) is reported beside it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .artifact import check_tensors, prompt_from_tensors
from .errors import ArtifactError, ConfigError
from .tasks.answer_metrics import Metric, get_metric, metric_label


@dataclass
class GenerationSetup:
    """What generating and scoring an answer needs, from a task or from an artifact's prompt.json."""

    template: str
    input_fields: list[str]
    metrics: list[tuple[str, Metric]]
    max_new_tokens: int
    stop: list[str]

    @property
    def primary(self) -> str:
        return self.metrics[0][0]

    @classmethod
    def of_task(cls, task: Any) -> GenerationSetup:
        gen = task.generation
        return cls(task.spec.template, list(task.spec.input_fields), list(task.metrics), gen.max_new_tokens,
                   list(gen.stop))

    @classmethod
    def of_meta(cls, task_meta: Mapping[str, Any], where: str) -> GenerationSetup:
        gen = task_meta.get("generation") or {}
        metrics = []
        for entry in task_meta.get("metric") or []:
            name, options = metric_entry(entry, where)
            metrics.append((metric_label(name, options), _Deferred(name, options)))
        if not metrics:
            raise ArtifactError(f"{where}: field 'task.metric' must name at least one metric")
        return cls(task_meta["template"], list(task_meta["input_fields"]), metrics,
                   int(gen.get("max_new_tokens", 32)), list(gen.get("stop", [])))


class _Deferred:
    """A recorded metric bound on first use: applying an artifact never needs its metrics (nor their
    libraries, nor a user's `python:` module); scoring does."""

    def __init__(self, name: str, options: dict[str, Any]):
        self.name, self.options, self.fn = name, options, None

    def __call__(self, prediction: str, answers: Sequence[str]) -> float:
        if self.fn is None:
            self.fn = get_metric(self.name, **self.options)
        return self.fn(prediction, answers)


def metric_entry(entry: Any, where: str) -> tuple[str, dict[str, Any]]:
    """(name, options) of one recorded metric: a name, or a mapping with `name` (and `options`, or the
    options beside the name)."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
        options = entry.get("options")
        if options is None:
            options = {k: v for k, v in entry.items() if k != "name"}
        return entry["name"], dict(options)
    raise ArtifactError(f"{where}: field 'task.metric' entries must be a metric name or {{name: ..., options}}, "
                        f"not {entry!r:.60}")


def target_ids(backbone: Any, text: str, stop: Sequence[str]) -> list[int]:
    """The tokens a generative example trains on: its target text, then the first stop string (or the
    end-of-sequence token), so the prompt also learns where the answer ends."""
    tokenizer = backbone.tokenizer
    if stop:
        ids = tokenizer(text + stop[0], add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if not ids:
        raise ConfigError(f"target {text!r} tokenizes to nothing")
    return list(ids)


def split_prompt(prompt: Any, template: str) -> tuple[Any, str]:
    """(what the backbone takes, the template inputs are rendered with): a text prompt is its own template.
    A prompt that renders its own inputs (kNN demonstrations) stays as it is: `render_inputs` applies it."""
    from .prompts.hard import HardPrompt

    if isinstance(prompt, HardPrompt):
        return None, prompt.template
    return prompt, template


def render_inputs(backbone: Any, prompt: Any, template: str,
                  items: Sequence[Mapping[str, Any]]) -> tuple[Any, list[str]]:
    """(what the backbone takes, each item's input text) for `prompt` of any kind: a prompt that renders its
    own inputs does so (bound to `backbone`, whose inputs it encodes), any other fills its template."""
    from .prompts.knn import renders_own_inputs

    if renders_own_inputs(prompt):
        return None, prompt.bind(backbone).render_many(items)
    vectors, template = split_prompt(prompt, template)
    return vectors, [template.format_map(dict(item)) for item in items]


@torch.inference_mode()
def generate_answers(backbone: Any, setup: GenerationSetup, items: Sequence[Mapping[str, Any]], prompt: Any,
                     batch_size: int = 32, max_new_tokens: int | None = None,
                     stop: Sequence[str] | None = None) -> list[str]:
    """Greedy continuations of the rendered `items` behind `prompt` (any prompt kind), cut at a stop string."""
    vectors, texts = render_inputs(backbone, prompt, setup.template, items)
    return backbone.generate(texts, vectors, max_new_tokens=max_new_tokens or setup.max_new_tokens,
                             stop=list(setup.stop if stop is None else stop), batch_size=batch_size)


@torch.inference_mode()
def target_nll(backbone: Any, setup: GenerationSetup, items: Sequence[Mapping[str, Any]], targets: Sequence[str],
               prompt: Any, batch_size: int = 32) -> float:
    """The targets' negative log-likelihood per token (stop token included) behind `prompt`."""
    total, tokens = 0.0, 0
    for i in range(0, len(items), batch_size):
        vectors, texts = render_inputs(backbone, prompt, setup.template, items[i : i + batch_size])
        ids = backbone.tokenize(texts)
        tgt = [target_ids(backbone, t, setup.stop) for t in targets[i : i + batch_size]]
        total += float(backbone.target_nll(ids, tgt, vectors).sum())
        tokens += sum(map(len, tgt))
    return total / max(tokens, 1)


@dataclass
class GenerationResult:
    """A generative prompt scored on examples: each metric's mean, the target NLL, the outputs."""

    metrics: dict[str, float]
    primary: str
    nll: float
    n: int
    seconds: float
    predictions: list[str] = field(default_factory=list, repr=False)
    split: str | None = None
    excluded: int = 0

    @property
    def score(self) -> float:
        return self.metrics[self.primary]

    @property
    def accuracy(self) -> float:  # what best-on-dev and `Kind.score` read: the primary metric
        return self.score

    @property
    def examples_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {**self.metrics, "nll": self.nll, "n": self.n, "examples_per_s": self.examples_per_s}

    def line(self) -> str:
        order = [self.primary] + [k for k in self.metrics if k != self.primary]
        parts = [f"{k}={self.metrics[k]:.4f}" for k in order]
        return " ".join([*parts, f"nll={self.nll:.4f}", f"examples_per_s={self.examples_per_s:.2f}"])

    def summary(self) -> str:
        figures = ", ".join(f"{k} {v:.4f}" for k, v in self.metrics.items())
        return f"{self.n} examples: {figures}, target NLL {self.nll:.4f}/token, {self.examples_per_s:.1f} examples/s"


def score_outputs(setup: GenerationSetup, outputs: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Each metric's mean over the examples."""
    n = max(len(outputs), 1)
    return {name: sum(fn(out, list(ans)) for out, ans in zip(outputs, answers, strict=True)) / n
            for name, fn in setup.metrics}


def evaluate_generation(backbone: Any, task: Any, examples: Sequence[Any], prompt: Any,
                        batch_size: int = 32, setup: GenerationSetup | None = None) -> GenerationResult:
    """`prompt` on generative `examples`: generate, score with the task's metrics, and the target NLL."""
    setup = setup or GenerationSetup.of_task(task)
    items = [ex.fields for ex in examples]
    start = time.perf_counter()
    outputs = generate_answers(backbone, setup, items, prompt, batch_size)
    seconds = time.perf_counter() - start
    metrics = score_outputs(setup, outputs, [ex.answers for ex in examples])
    nll = target_nll(backbone, setup, items, [ex.answers[0] for ex in examples], prompt, batch_size) \
        if examples else math.nan
    return GenerationResult(metrics, setup.primary, nll, len(examples), seconds, outputs)


class GenerativePredictor:
    """A generative artifact applied to its frozen backbone: `generate` (and `predict`, the same) renders
    each input with the artifact's template and continues it behind the prompt, with the recorded
    generation settings (max_new_tokens, stop strings)."""

    def __init__(self, backbone: Any, meta: dict[str, Any], tensors: dict[str, torch.Tensor],
                 where: str = "artifact"):
        self.backbone = backbone
        self.meta = meta
        check_tensors(meta, tensors, backbone, where)
        try:
            prompt = prompt_from_tensors(meta["prompt_kind"], tensors, backbone.device, meta.get("text_prompt"))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(f"{where}: its {meta['prompt_kind']} prompt cannot be rebuilt ({first})") from None
        self.setup = GenerationSetup.of_meta(meta["task"], where)
        self.prompt, self.setup.template = split_prompt(prompt, self.setup.template)
        from .prompts.knn import renders_own_inputs

        if renders_own_inputs(self.prompt):  # bound now, so that a pool to re-encode is re-encoded at load
            self.prompt = self.prompt.bind(backbone)
        self.template = self.setup.template
        self.input_fields = self.setup.input_fields

    @property
    def max_new_tokens(self) -> int:
        return self.setup.max_new_tokens

    @property
    def stop(self) -> list[str]:
        return list(self.setup.stop)

    def item(self, value: str | Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(value, str):
            if len(self.input_fields) != 1:
                raise ConfigError(f"this prompt's template needs fields {', '.join(self.input_fields)}: pass a "
                                  "mapping, not a string")
            return {self.input_fields[0]: value}
        missing = [f for f in self.input_fields if f not in value]
        if missing:
            raise ConfigError(f"input lacks field(s) {', '.join(missing)} needed by the template")
        return dict(value)

    def render(self, value: str | Mapping[str, Any]) -> str:
        return render_inputs(self.backbone, self.prompt, self.template, [self.item(value)])[1][0]

    def generate(self, inputs: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]],
                 max_new_tokens: int | None = None, stop: Sequence[str] | None = None,
                 batch_size: int = 32) -> Any:
        """The answer to one input (a string back), or to each of a list of inputs (a list back)."""
        single = isinstance(inputs, (str, Mapping))
        items = [self.item(x) for x in ([inputs] if single else inputs)]
        out = generate_answers(self.backbone, self.setup, items, self.prompt, batch_size, max_new_tokens, stop)
        return out[0] if single else out

    def predict(self, inputs: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]]) -> list[str]:
        """The answers, always a list (one input is a list of one)."""
        return self.generate([inputs] if isinstance(inputs, (str, Mapping)) else list(inputs))

    def score(self, outputs: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
        """The artifact's metrics of `outputs` against the acceptable `answers`."""
        return score_outputs(self.setup, outputs, answers)

"""Metrics for tasks whose answer is text: each compares one generated answer with the acceptable
answers (a list: several may be right) and returns a score in [0, 1], the best over the answers.

Each metric is a small registered function; its normalisation is stated where it is defined.
`get_metric("exact_match", lower=False)` gives a metric with options; `python:module:function`
names a user function `(prediction, answers) -> float` (options, if any, are passed to it as keywords).
ROUGE, chrF and BLEU come from `rouge-score` and `sacrebleu`, JSON Schema from `jsonschema` (the
`generation` extra). Metrics that hold state (`llm_judge`, in `judge.py`) are registered as factories:
`get_metric` builds them from their options without scoring anything.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from ..errors import ConfigError

Metric = Callable[[str, Sequence[str]], float]
_METRICS: dict[str, Callable[..., float]] = {}
_FACTORIES: dict[str, Callable[..., Metric]] = {}
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def register_metric(name: str) -> Callable[[Callable[..., float]], Callable[..., float]]:
    def add(fn: Callable[..., float]) -> Callable[..., float]:
        if name in _METRICS or name in _FACTORIES:
            raise RuntimeError(f"metric '{name}' registered twice")
        _METRICS[name] = fn
        return fn

    return add


def register_metric_factory(name: str) -> Callable[[Callable[..., Metric]], Callable[..., Metric]]:
    """A metric built from its options (`factory(**options) -> Metric`): for metrics with state, such as a
    client, that must not be probed with a dummy call the way plain metrics are."""
    def add(factory: Callable[..., Metric]) -> Callable[..., Metric]:
        if name in _METRICS or name in _FACTORIES:
            raise RuntimeError(f"metric '{name}' registered twice")
        _FACTORIES[name] = factory
        return factory

    return add


def metric_names() -> list[str]:
    return sorted([*_METRICS, *_FACTORIES])


def metric_label(name: str, options: dict[str, Any]) -> str:
    """How a metric is named in reports: its name, with its options when it has any (sorted, `k=v` joined by
    commas; a `client` given at bind time is not an option of the task and is left out):
    "exact_match", "exact_match(lower=False)"."""
    shown = {k: v for k, v in sorted(options.items()) if k != "client"}
    if not shown:
        return name
    simple = all(isinstance(v, (bool, int, float)) or (isinstance(v, str) and re.fullmatch(r"[\w.:/-]{1,32}", v))
                 for v in shown.values())
    if simple:
        return f"{name}({','.join(f'{k}={v}' for k, v in shown.items())})"
    # long or spaced options (a rubric, a schema) would break `key=value` lines: a short hash names them
    digest = hashlib.sha256(json.dumps(shown, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{name}({digest})"


def get_metric(name: str, **options: Any) -> Metric:
    """The metric `name` with its options bound; `python:module:function` imports a user metric."""
    if name.startswith("python:"):
        fn = _python_metric(name)
        return partial(fn, **options) if options else fn
    if name in _FACTORIES:
        try:
            return _FACTORIES[name](**options)
        except TypeError as exc:
            raise ConfigError(f"metric '{name}': bad options {sorted(options)} ({exc})") from None
    if name not in _METRICS:
        raise ConfigError(f"metric '{name}' is not known (known: {', '.join(metric_names())}, or "
                          "python:module:function)")
    fn = _METRICS[name]
    try:
        bound = partial(fn, **options)
        bound("", [""])  # bad options fail now, with the metric's name, not on the first example
    except TypeError as exc:
        raise ConfigError(f"metric '{name}': bad options {options} ({exc})") from None
    return bound


def _python_metric(spec: str) -> Metric:
    _, module, function = (spec.split(":", 2) + ["", ""])[:3]
    if not module or not function:
        raise ConfigError(f"metric '{spec}': expected python:module:function")
    try:
        fn = getattr(importlib.import_module(module), function)
    except Exception as exc:  # noqa: BLE001 - a user module may fail to import in any way: one line, not a trace
        raise ConfigError(f"metric '{spec}' does not import ({type(exc).__name__}: {exc})") from None
    if not callable(fn):
        raise ConfigError(f"metric '{spec}': {module}.{function} is not callable")
    return fn


def normalize(text: str, lower: bool = True, punctuation: bool = True, articles: bool = True,
              whitespace: bool = True) -> str:
    """SQuAD's answer normalisation, each step optional: lower-case, drop punctuation, drop the
    articles a/an/the, collapse whitespace."""
    if lower:
        text = text.lower()
    if punctuation:
        text = "".join(ch for ch in text if ch not in string.punctuation)
    if articles:
        text = _ARTICLES.sub(" ", text)
    return " ".join(text.split()) if whitespace else text


@register_metric("exact_match")
def exact_match(prediction: str, answers: Sequence[str], lower: bool = True, punctuation: bool = True,
                articles: bool = True, whitespace: bool = True) -> float:
    """1 when the normalised prediction equals a normalised answer (SQuAD's normalisation; each step
    can be turned off)."""
    norm = partial(normalize, lower=lower, punctuation=punctuation, articles=articles, whitespace=whitespace)
    return float(any(norm(prediction) == norm(a) for a in answers))


@register_metric("exact_set")
def exact_set(prediction: str, answers: Sequence[str]) -> float:
    """1 when the prediction and an answer hold the same set of normalised words, in any order and count
    ("beetle, bear" = "bear, beetle"; instruction induction scores taxonomy_animal this way)."""
    words = set(normalize(prediction).split())
    return float(any(words == set(normalize(a).split()) for a in answers))


@register_metric("contains")
def contains(prediction: str, answers: Sequence[str], lower: bool = True) -> float:
    """1 when a normalised answer occurs in the normalised prediction (same normalisation as exact_match)."""
    norm = partial(normalize, lower=lower)
    return float(any(norm(a) in norm(prediction) for a in answers if norm(a)))


@register_metric("f1")
def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """SQuAD's token F1 on normalised text, the best over the answers (two empty texts score 1)."""
    pred = normalize(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize(answer).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


@register_metric("rouge_l")
def rouge_l(prediction: str, answers: Sequence[str]) -> float:
    """ROUGE-L F-measure (`rouge-score`, with its stemmer), the best over the answers."""
    scorer = _rouge_scorer()
    return max((scorer.score(a, prediction)["rougeL"].fmeasure for a in answers), default=0.0)


@register_metric("chrf")
def chrf(prediction: str, answers: Sequence[str]) -> float:
    """Sentence chrF (`sacrebleu`, its defaults) against all answers as references, scaled to [0, 1]."""
    return _sacrebleu().sentence_chrf(prediction, list(answers)).score / 100


@register_metric("bleu")
def bleu(prediction: str, answers: Sequence[str]) -> float:
    """Sentence BLEU (`sacrebleu`, exponential smoothing) against all answers as references, in [0, 1]."""
    return _sacrebleu().sentence_bleu(prediction, list(answers)).score / 100


@register_metric("numeric")
def numeric(prediction: str, answers: Sequence[str], tolerance: float = 1e-6) -> float:
    """1 when the last number in the prediction is within `tolerance` (absolute) of an answer's last
    number; thousands separators are ignored."""
    got = _last_number(prediction)
    if got is None:
        return 0.0
    return float(any((want := _last_number(a)) is not None and abs(got - want) <= tolerance for a in answers))


@register_metric("regex")
def regex(prediction: str, answers: Sequence[str], pattern: str | None = None) -> float:
    """1 when the stripped prediction fully matches `pattern`, or, without one, one of the (stripped) answers
    read as a pattern."""
    patterns = [pattern] if pattern is not None else list(answers)
    try:
        return float(any(re.fullmatch(p.strip(), prediction.strip()) for p in patterns))
    except re.error as exc:
        raise ConfigError(f"metric 'regex': bad pattern ({exc})") from None


@register_metric("json")
def json_valid(prediction: str, answers: Sequence[str], schema: dict[str, Any] | None = None) -> float:
    """1 when the prediction parses as JSON and, given a `schema`, validates against it (`jsonschema`)."""
    try:
        value = json.loads(prediction)
    except ValueError:
        return 0.0
    if schema is None:
        return 1.0
    import jsonschema

    return float(jsonschema.Draft202012Validator(schema).is_valid(value))


def _last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    value = float(found[-1].replace(",", ""))
    return value if math.isfinite(value) else None


def _rouge_scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ConfigError("metric 'rouge_l' needs rouge-score: pip install 'prompttune[generation]'") from None
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:
        raise ConfigError("metrics 'chrf' and 'bleu' need sacrebleu: pip install 'prompttune[generation]'") from None
    return sacrebleu

"""Kinds are plug-ins: a third kind defined here alone runs through the public API; old artifacts load.

The toy kind is deliberately unlike the built-in two: its "backbone" is the real SmolLM2 tokenizer
(no forward pass), its task is "is this SST-2 sentence long?" (more than 20 words, a label the data
defines) and its one method learns a threshold on the token count. Nothing in src/ knows of it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import prompttune
from prompttune import kinds as kinds_pkg
from prompttune.artifact import ARTIFACT_JSON, field_of, read_artifact
from prompttune.errors import ConfigError
from prompttune.kinds import Kind, Prepared
from prompttune.methods import Method, MethodConfig, MethodResult, RunContext
from prompttune.methods import base as methods_base
from prompttune.prompts import kinds as prompt_kinds
from prompttune.tasks import load_task

LONG_WORDS = 20


@dataclass
class ToyBackbone:
    """The real SmolLM2 backbone seen through a new kind: only its tokenizer is used."""

    inner: Any
    kind: str = "toy"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def n_tokens(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([len(ids) for ids in self.inner.tokenize(texts)], dtype=torch.float32)


@dataclass
class ToyScores:
    accuracy: float
    n: int
    split: str | None = None
    excluded: int = 0
    primary = "accuracy"

    def as_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "n": self.n}

    def line(self) -> str:
        return f"accuracy={self.accuracy:.4f}"

    def summary(self) -> str:
        return f"{self.n} sentences: accuracy {self.accuracy:.4f}"


class ToyPredictor:
    def __init__(self, backbone: ToyBackbone, threshold: float):
        self.backbone, self.threshold = backbone, threshold

    def classify(self, texts: list[str]) -> list[tuple[str, dict[str, float]]]:
        long = (self.backbone.n_tokens(texts) > self.threshold).tolist()
        return [("long", {"long": 1.0, "short": 0.0}) if x else ("short", {"long": 0.0, "short": 1.0}) for x in long]

    def accuracy(self, rows: list[tuple[str, str]]) -> ToyScores:
        got = [label for label, _ in self.classify([t for t, _ in rows])]
        return ToyScores(sum(g == y for g, (_, y) in zip(got, rows, strict=True)) / len(rows), len(rows))


class ToyKind(Kind):
    name = "toy"
    backbone_kinds = ("toy",)

    def load_backbone(self, model: str, device: str, dtype: str) -> ToyBackbone:
        from prompttune.models import load_backbone

        return ToyBackbone(load_backbone(model, device=device, dtype=dtype))

    def is_backbone(self, obj: Any) -> bool:
        return isinstance(obj, ToyBackbone)

    def load_task(self, source: Any, data_dir: str | Path | None) -> dict[str, list[tuple[str, str]]]:
        if source != "sst2-length":
            raise ConfigError(f"toy task '{source}': only sst2-length")
        sst2 = load_task("sst2", data_dir)
        label = {True: "long", False: "short"}
        return {split: [(ex.fields["sentence"], label[len(ex.fields["sentence"].split()) > LONG_WORDS])
                        for ex in sst2.split(split)] for split in ("train", "test")}

    def prepare(self, task, data_dir, shots, seed, dev_shots, eval_split, eval_limit, **options) -> Prepared:
        rows = self.load_task(task, data_dir)
        rng = random.Random(seed)
        train, dev = [], []
        for label in ("long", "short"):
            picked = rng.sample([r for r in rows["train"] if r[1] == label], shots + (dev_shots or shots))
            train += picked[:shots]
            dev += picked[shots:]
        data = type("Draw", (), {"train": train, "dev": dev})()
        held = rows["test"][:eval_limit] if eval_limit else rows["test"]
        meta = {"task": {"name": task, "labels": ["long", "short"]}, "data": {"shots": shots, "seed": seed}}
        return Prepared(rows, data, held, {"task": task, "shots": shots, "dev_shots": dev_shots}, meta,
                        {"data_dir": data_dir})

    def context(self, prepared: Prepared, backbone: Any, **common: Any) -> RunContext:
        return RunContext(backbone=backbone, task=prepared.task, data=prepared.data, **common)

    def predictor(self, backbone, meta, tensors, where, task=None) -> ToyPredictor:
        return ToyPredictor(backbone, float(tensors["threshold"][0]))

    def evaluate(self, backbone, prepared, meta, tensors) -> dict[str, Any]:
        predictor = self.predictor(backbone, meta, tensors, "run")
        scores = {"dev": predictor.accuracy(prepared.data.dev), "eval": predictor.accuracy(prepared.held_out)}
        scores["eval"].split = "test"
        return scores

    def check_meta(self, meta: dict[str, Any], where: Path) -> None:
        field_of(meta, "task.labels", list, where)

    def eval_plan(self, path, meta, task, data_dir, split, limit) -> list[tuple[str, str]]:
        rows = self.load_task(task or meta["task"]["name"], data_dir)["test"]
        return rows[:limit] if limit else rows

    def evaluate_artifact(self, plan, meta, tensors, backbone, where) -> ToyScores:
        result = self.predictor(backbone, meta, tensors, where).accuracy(plan)
        result.split = "test"
        return result


class ToyThreshold(Method):
    """The token count that best splits the training sentences into long and short."""

    name = "toy-threshold"
    description = "a threshold on the token count (test-only kind)"
    backbone_kinds = ("toy",)
    Config = MethodConfig

    def fit(self, ctx: RunContext) -> MethodResult:
        counts = ctx.backbone.n_tokens([t for t, _ in ctx.data.train])
        long = torch.tensor([y == "long" for _, y in ctx.data.train])
        best = max(counts.unique().tolist(), key=lambda t: int(((counts > t) == long).sum()))
        return MethodResult("toy-threshold", {"threshold": torch.tensor([best])}, 1)


@pytest.fixture
def toy_kind(monkeypatch):
    """The toy kind, its method and its prompt kind, registered for this test only."""
    monkeypatch.setitem(kinds_pkg.base._KINDS, "toy", ToyKind())
    monkeypatch.setitem(methods_base._REGISTRY, "toy-threshold", ToyThreshold)
    monkeypatch.setitem(prompt_kinds.PROMPT_KINDS, "toy-threshold",
                        prompt_kinds.PromptKind("toy-threshold", shapes=lambda backbone, n: {"threshold": ("1",)}))


def test_a_third_kind_trains_evaluates_and_loads_through_the_public_api(toy_kind, backbone, data_dir, tmp_path):
    toy = ToyBackbone(backbone)
    report = prompttune.train("toy-threshold", toy, "sst2-length", data_dir, shots=16, seed=0, out=tmp_path / "toy",
                              eval_limit=400, progress=False)
    meta = json.loads((tmp_path / "toy" / ARTIFACT_JSON).read_text())
    assert meta["kind"] == "toy" and meta["primary_metric"] == "accuracy" and meta["prompt_kind"] == "toy-threshold"
    held = meta["metrics"]["eval"]
    assert held["split"] == "test" and held["n"] == 400
    # it learned: the threshold beats always answering the more common label on held-out sentences
    rows = ToyKind().load_task("sst2-length", data_dir)["test"][:400]
    majority = max(sum(y == "long" for _, y in rows), sum(y == "short" for _, y in rows)) / len(rows)
    assert report.score == held["accuracy"] > majority + 0.1, (report.score, majority)
    again = prompttune.evaluate_artifact(tmp_path / "toy", data_dir=data_dir, limit=400, model=toy)
    assert again.line() == f"accuracy={held['accuracy']:.4f}"
    predictor = prompttune.load(tmp_path / "toy", model=toy)
    long_sentence = " ".join(["a remarkably long and winding sentence"] * 8)
    assert [label for label, _ in predictor.classify(["short one", long_sentence])] == ["short", "long"]
    assert [label for label, _ in prompttune.api.predict(tmp_path / "toy", [long_sentence], model=toy)] == ["long"]
    with pytest.raises(ConfigError, match="artifacts of kind 'toy' cannot be served"):
        prompttune.api.serving_engine([str(tmp_path / "toy")], model=toy)
    # the toy kind's prompt.json check runs at load, through the kind
    meta["task"]["labels"] = "long,short"
    (tmp_path / "toy" / ARTIFACT_JSON).write_text(json.dumps(meta))
    with pytest.raises(prompttune.PromptTuneError, match="'task.labels' must be a list"):
        prompttune.load(tmp_path / "toy", model=toy)


def test_a_method_of_an_unregistered_kind_is_refused_clearly(monkeypatch, tmp_path):
    monkeypatch.setitem(methods_base._REGISTRY, "toy-threshold", ToyThreshold)
    with pytest.raises(ConfigError, match="trains on toy backbones, which no kind registered here runs"):
        prompttune.train("toy-threshold", "smollm2-135m", "sst2", out=tmp_path / "x", progress=False)


# --------------------------------------------------------------------------- the prompt.json schema before kinds
def _as_before_kinds(path: Path, edit) -> None:
    meta = json.loads((path / ARTIFACT_JSON).read_text())
    for key in ("kind", "primary_metric"):
        meta.pop(key)
    edit(meta)
    (path / ARTIFACT_JSON).write_text(json.dumps(meta))


def test_text_and_clip_artifacts_in_the_old_schema_still_load(backbone, data_dir, tmp_path, fashion_mnist_installed):
    from prompttune.models.clip import load_clip_backbone
    from prompttune.tasks.images import load_image_task
    from prompttune.testing import tiny_clip

    prompttune.train("zero-shot", backbone, "sst2", data_dir, shots=2, out=tmp_path / "text", eval_limit=8,
                     progress=False)
    _as_before_kinds(tmp_path / "text", lambda m: m["backbone"].pop("kind"))
    assert prompttune.load(tmp_path / "text", model=backbone).predict(["a gorgeous film"]) in (["0"], ["1"])

    clip = load_clip_backbone(str(tiny_clip(tmp_path / "tiny-clip")), device="cpu")
    fashion = load_image_task("fashion-mnist")
    report = prompttune.train("coop", clip, fashion, shots=2, out=tmp_path / "clip", eval_limit=2, progress=False,
                              steps=2, batch_size=4, n_tokens=4)

    def old_clip(meta: dict) -> None:  # the layout `vlm.train_clip` wrote
        data, metrics = meta.pop("data"), meta.pop("metrics")["eval"]
        meta.update(shots=data["shots"], seed=data["seed"], seconds=meta.pop("train_seconds"),
                    metrics={"base": metrics["base"], "new": metrics["new"], "hm": metrics["hm"]})
        meta["hyperparameters"]["n_ctx"] = meta["hyperparameters"].pop("n_tokens")
        meta["backbone"] = {k: meta["backbone"][k] for k in ("id", "fingerprint", "fingerprint_version")}
        meta["backbone"]["kind"] = "clip"
        for key in ("info", "history"):
            meta.pop(key)

    _as_before_kinds(tmp_path / "clip", old_clip)
    predictor = prompttune.load(tmp_path / "clip", model=clip, task=fashion)
    assert predictor.prompt.ctx.shape[0] == 4 and report.meta["hyperparameters"]["n_tokens"] == 4
    assert predictor.meta["data"]["shots"] == 2 and predictor.meta["metrics"]["eval"]["hm"] == pytest.approx(
        report.meta["metrics"]["eval"]["hm"], nan_ok=True)
    images = fashion.test.images([0, 1])
    assert [label for label, _ in predictor.classify(list(images))] == [
        fashion.classes[i] for i in predictor.probabilities(list(images)).argmax(-1).tolist()]
    scores = prompttune.evaluate_artifact(tmp_path / "clip", task=fashion, limit=2, model=clip)
    assert scores.as_dict()["hm"] == pytest.approx(report.meta["metrics"]["eval"]["hm"], nan_ok=True)


def test_prompt_length_is_n_tokens_for_every_method_with_n_ctx_as_its_alias(tmp_path, fashion_mnist_installed):
    from prompttune.models.clip import load_clip_backbone
    from prompttune.tasks.images import load_image_task
    from prompttune.testing import tiny_clip

    clip = load_clip_backbone(str(tiny_clip(tmp_path / "tiny-clip")), device="cpu")
    fashion = load_image_task("fashion-mnist")
    common = dict(shots=2, eval_limit=2, progress=False, steps=2, batch_size=4)
    for name, value in (("n_tokens", 4), ("n_ctx", 3)):
        out = tmp_path / name
        prompttune.train("coop", clip, fashion, out=out, **common, **{name: value})
        meta, tensors = read_artifact(out)
        assert meta["hyperparameters"]["n_tokens"] == value and tensors["ctx"].shape[0] == value
        # fingerprinted under the old name, so CLIP runs started before the rename still resume
        assert meta["run_identity"]["config"]["n_ctx"] == value and "n_tokens" not in meta["run_identity"]["config"]
    with pytest.raises(ConfigError, match="method 'coop': n_ctx: n_ctx is another name for n_tokens"):
        prompttune.train("coop", clip, fashion, out=tmp_path / "both", n_tokens=4, n_ctx=4, **common)
    with pytest.raises(ConfigError, match="eval_split 'dev': an image task is scored on its test split"):
        prompttune.train("coop", clip, fashion, out=tmp_path / "dev", eval_split="dev", **common)


def test_one_server_refuses_artifacts_of_two_kinds(backbone, data_dir, tmp_path, fashion_mnist_installed):
    from prompttune.api import serving_engine
    from prompttune.models.clip import load_clip_backbone
    from prompttune.testing import tiny_clip

    clip = load_clip_backbone(str(tiny_clip(tmp_path / "tiny-clip")), device="cpu")
    prompttune.train("zero-shot-clip", clip, "fashion-mnist", shots=2, out=tmp_path / "clip", eval_limit=2,
                     progress=False)
    prompttune.train("zero-shot", backbone, "sst2", data_dir, shots=2, out=tmp_path / "text", eval_limit=4,
                     progress=False)
    with pytest.raises(ConfigError, match=r"artifacts of different kinds \(clip: .*clip; text: .*text\)"):
        serving_engine([str(tmp_path / "clip"), str(tmp_path / "text")])


def test_a_failing_extra_metric_never_costs_the_trained_prompt(monkeypatch, backbone, data_dir, tmp_path):
    from prompttune.methods.zero_shot import ZeroShot

    class Flaky(ZeroShot):
        name = "flaky-zero-shot"

        def extra_metrics(self, ctx, result, score):
            score(None)  # one real held-out evaluation, then a failure half-way
            raise RuntimeError("oracle broke")

    monkeypatch.setitem(methods_base._REGISTRY, "flaky-zero-shot", Flaky)
    with pytest.warns(RuntimeWarning, match="its extra metrics failed"):
        report = prompttune.train("flaky-zero-shot", backbone, "sst2", data_dir, shots=2, out=tmp_path / "z",
                                  eval_limit=8, progress=False, extra_metrics=True)
    meta, _ = read_artifact(tmp_path / "z")
    assert meta["metrics"]["extra"] == {"error": "RuntimeError: oracle broke"} and report.test.n == 8

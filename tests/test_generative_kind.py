"""Generative tasks through the one run pipeline: the kind is chosen from the task, methods that cannot
learn text answers are refused before anything is written, and an artifact's numbers are reproduced by
`evaluate_artifact`, `load(...).generate` and `predict`."""

from __future__ import annotations

import json

import pytest

import prompttune
from prompttune.api import evaluate_artifact
from prompttune.api import predict as api_predict
from prompttune.errors import ConfigError

TASK = "ii:singular_to_plural"
TINY = {"shots": 8, "dev_shots": 8, "eval_limit": 12, "steps": 4, "n_tokens": 4, "seed": 0, "progress": False}


@pytest.fixture(scope="module")
def artifact(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "pt"
    report = prompttune.train("prompt-tuning", task=TASK, data_dir=data_dir, out=out, **TINY)
    return out, report


def test_generative_artifact_records_its_task_and_metrics(artifact):
    out, report = artifact
    meta = json.loads((out / "prompt.json").read_text())
    assert meta["kind"] == "generation" and meta["primary_metric"] == "exact_match" == report.primary_metric
    assert meta["task"]["target"] == " {output}" and "verbalizer" not in meta["task"]
    assert meta["task"]["generation"] == {"max_new_tokens": 16, "stop": ["\n"]}
    assert meta["metrics"]["eval"]["split"] == "test" and meta["metrics"]["eval"]["n"] == 12
    assert {"exact_match", "nll"} <= set(meta["metrics"]["dev"])
    assert report.score == meta["metrics"]["eval"]["exact_match"]


def test_evaluate_load_and_predict_reproduce_the_train_time_figures(artifact, data_dir):
    out, report = artifact
    again = evaluate_artifact(out, data_dir=data_dir, limit=12)
    assert again.split == "test" and again.n == 12
    assert again.metrics == pytest.approx({k: report.test.metrics[k] for k in again.metrics})
    assert again.nll == pytest.approx(report.test.nll, abs=1e-5)
    assert again.predictions == report.test.predictions
    assert again.line().startswith("exact_match=") and again.line().split()[-1].startswith("examples_per_s=")
    predictor = prompttune.load(out)
    words = ["cat", "box", "child"]
    answers = predictor.generate(words)
    assert answers == [predictor.generate(w) for w in words]  # one at a time = batched
    assert all("\n" not in a for a in answers)
    assert [a for a, probs in api_predict(out, words)] == answers
    assert all(probs == {} for _, probs in api_predict(out, words[:1]))


@pytest.mark.parametrize("method", ["prompt-boosting", "fine-tune-head"])
def test_methods_that_need_labels_are_refused_before_anything_is_written(method, data_dir, tmp_path):
    with pytest.raises(ConfigError, match=rf"method '{method}' cannot learn a prompt for generative task '{TASK}'"):
        prompttune.train(method, task=TASK, data_dir=data_dir, out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_a_generative_task_on_an_encoder_is_refused(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="needs a causal LM"):
        prompttune.train("zero-shot", model="minilm-l6", task=TASK, data_dir=data_dir, out=tmp_path / "x",
                         progress=False)
    with pytest.raises(ConfigError, match="fine-tune-head.*linear classifier"):
        prompttune.train("fine-tune-head", model="minilm-l6", task=TASK, data_dir=data_dir, out=tmp_path / "y",
                         progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_transfer_between_generative_tasks_with_distillation(artifact, data_dir, tmp_path):
    """prompt-transfer from one generative task to another, with PANDA's distillation term (KL over the vocabulary
    at the target positions), trains and writes a generative artifact."""
    out, _ = artifact
    report = prompttune.train("prompt-transfer", task="ii:antonyms", data_dir=data_dir, out=tmp_path / "t",
                              source=str(out), distill=0.5, **{k: v for k, v in TINY.items() if k != "n_tokens"})
    assert report.meta["kind"] == "generation" and report.meta["info"]["source"] == str(out.resolve())
    assert all(h["loss"] == h["loss"] for h in report.meta["history"] if "loss" in h)  # finite, not NaN


def test_a_generative_artifact_is_not_scored_on_a_classification_task(artifact, data_dir):
    out, _ = artifact
    with pytest.raises(ConfigError, match="task 'sst2' is a classification task; this artifact's prompt was learned "
                                          "for a generative task"):
        evaluate_artifact(out, task="sst2", data_dir=data_dir, limit=4)


def test_predict_takes_one_input_or_a_list(artifact):
    out, _ = artifact
    predictor = prompttune.load(out)
    assert predictor.predict("cat") == predictor.predict(["cat"]) == [predictor.generate("cat")]


def test_applying_an_artifact_never_binds_its_metrics():
    """A recorded metric that cannot be bound here (a user module that is not installed) fails only when scoring."""
    from prompttune.generative import GenerationSetup

    setup = GenerationSetup.of_meta({"template": "Input: {input}\nOutput:", "input_fields": ["input"],
                                     "metric": [{"name": "python:not_installed_mod:fn", "options": {}}],
                                     "generation": {"max_new_tokens": 4, "stop": ["\n"]}}, "prompt.json")
    assert setup.primary == "python:not_installed_mod:fn"
    with pytest.raises(ConfigError, match="does not import"):
        setup.metrics[0][1]("cats", [" cats"])


def test_classification_run_identity_is_unchanged_by_the_generative_fields(data_dir):
    """Runs started before the schema gained target/metric/generation still --resume: a classification task's
    identity leaves the new fields out while they are unset (and keeps keep_rows_with once it is set)."""
    from prompttune.kinds.text import task_identity
    from prompttune.tasks import load_task

    spec = load_task("sst2", data_dir).spec
    new_fields = {"target", "metric", "generation", "dev_metric", "keep_rows_with", "also_accept"}
    assert not new_fields & set(task_identity(spec))
    kept = spec.model_copy(update={"keep_rows_with": ["sentence"]})
    assert task_identity(kept)["keep_rows_with"] == ["sentence"]

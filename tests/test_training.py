"""Prompt tuning end to end on SmolLM2 + SST-2: it learns, its artifact round-trips, it resumes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import prompttune
from helpers import GAIN
from prompttune.artifact import ARTIFACT_JSON, ARTIFACT_TENSORS

# Held-out SST-2 dev sentences (the dev shots are drawn from the same split and left out of these).
HELD_OUT = 200


@pytest.fixture(scope="module")
def zero_shot(backbone, data_dir, tmp_path_factory):
    return prompttune.train("zero-shot", backbone, "sst2", data_dir, shots=16, seed=0,
                            out=tmp_path_factory.mktemp("zs") / "run", eval_split="dev", eval_limit=HELD_OUT,
                            progress=False)


@pytest.fixture(scope="module")
def tuned(backbone, data_dir, tmp_path_factory):
    return prompttune.train("prompt-tuning", backbone, "sst2", data_dir, shots=16, seed=0,
                            out=tmp_path_factory.mktemp("pt") / "run", eval_split="dev", eval_limit=HELD_OUT,
                            steps=32, lr=0.03, eval_every=8, progress=False)


def test_prompt_tuning_beats_zero_shot_on_held_out_dev(zero_shot, tuned):
    assert zero_shot.test is not None and tuned.test is not None
    assert zero_shot.test.n == tuned.test.n == HELD_OUT
    print(f"zero-shot {zero_shot.test.accuracy:.3f} -> prompt tuning {tuned.test.accuracy:.3f}")
    assert tuned.test.accuracy >= zero_shot.test.accuracy + GAIN


def test_artifact_layout_and_metadata(tuned, backbone):
    files = sorted(p.name for p in tuned.out_dir.iterdir())
    assert files == [ARTIFACT_JSON, ARTIFACT_TENSORS]  # checkpoint removed, nothing else, no pickle
    meta = json.loads((tuned.out_dir / ARTIFACT_JSON).read_text())
    assert meta["method"] == "prompt-tuning" and meta["prompt_kind"] == "soft"
    assert meta["kind"] == "text" and meta["primary_metric"] == "accuracy"
    assert meta["backbone"] == {"id": "smollm2-135m", "fingerprint": backbone.fingerprint, "fingerprint_version": 2,
                                "kind": "causal-lm", "class": "LlamaForCausalLM", "hidden_size": 576,
                                "dtype": "float32"}
    assert meta["hyperparameters"]["n_tokens"] == 20 and meta["trainable_parameters"] == 20 * 576
    assert meta["task"]["verbalizer"] == {"0": " negative", "1": " positive"}
    assert set(meta["metrics"]) == {"dev", "eval"} and meta["metrics"]["eval"]["split"] == "dev"
    assert meta["metrics"]["eval"]["n"] == meta["data"]["eval_size"] == HELD_OUT
    assert {"torch", "transformers", "prompttune"} <= set(meta["versions"])
    assert load_file(str(tuned.out_dir / ARTIFACT_TENSORS))["prompt"].dtype == torch.float32


def test_save_load_gives_identical_scores(tuned, backbone, sst2):
    predictor = prompttune.load(tuned.out_dir, model=backbone)
    examples = sst2.split("test")[:16]
    texts = [ex.fields["sentence"] for ex in examples]
    tensors = load_file(str(tuned.out_dir / ARTIFACT_TENSORS))
    ids = backbone.tokenize([sst2.render(ex) for ex in examples])
    labels = backbone.label_words(sst2.words())
    with torch.no_grad():
        direct = torch.log_softmax(backbone.score(ids, labels, tensors["prompt"]), -1)
    assert torch.equal(predictor.scores(texts), direct)
    assert predictor.predict(texts) == [predictor.labels[i] for i in direct.argmax(1).tolist()]
    assert isinstance(predictor.generate(texts[0], max_new_tokens=5), str)
    again = prompttune.load(tuned.out_dir)  # loads the recorded backbone by itself
    assert torch.equal(again.scores(texts), direct)


class Interrupt(Exception):
    pass


def test_resume_is_bit_identical(backbone, data_dir, tmp_path):
    common = dict(model=backbone, task="sst2", data_dir=data_dir, shots=4, seed=1, eval_split="dev", eval_limit=8,
                  steps=6, eval_every=2, checkpoint_every=2, batch_size=4, lr=0.03, progress=False)
    whole = prompttune.train("prompt-tuning", out=tmp_path / "whole", **common)

    def crash_at_5(step, loss):
        if step == 5:
            raise Interrupt  # killed after step 5, whose update is lost: the last checkpoint is step 4

    with pytest.raises(Interrupt):
        prompttune.train("prompt-tuning", out=tmp_path / "cut", callbacks=[crash_at_5], **common)
    assert (tmp_path / "cut" / "checkpoint.safetensors").exists()
    assert not (tmp_path / "cut" / ARTIFACT_JSON).exists()
    with pytest.raises(prompttune.PromptTuneError, match="unfinished run's checkpoint; pass --resume"):
        prompttune.train("prompt-tuning", out=tmp_path / "cut", **common)
    resumed = prompttune.train("prompt-tuning", out=tmp_path / "cut", resume=True, **common)
    a = load_file(str(whole.out_dir / ARTIFACT_TENSORS))["prompt"]
    b = load_file(str(resumed.out_dir / ARTIFACT_TENSORS))["prompt"]
    assert torch.equal(a, b)
    assert whole.meta["history"] == resumed.meta["history"]


def test_resume_refuses_a_checkpoint_of_another_run(backbone, data_dir, tmp_path):
    common = dict(model=backbone, task="sst2", data_dir=data_dir, shots=2, seed=0, eval_split="dev", eval_limit=4,
                  steps=4, eval_every=2, batch_size=2, progress=False, out=tmp_path / "run")

    def crash_at_3(step, loss):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        prompttune.train("prompt-tuning", lr=0.03, callbacks=[crash_at_3], **common)
    with pytest.raises(prompttune.PromptTuneError, match="checkpoint belongs to a different run"):
        prompttune.train("prompt-tuning", lr=0.05, resume=True, **common)

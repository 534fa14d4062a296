"""Encoder backbones (MiniLM from PyPI): zero-shot by label similarity, and fine-tune-head."""

from __future__ import annotations

import pytest
import torch

import prompttune
from helpers import GAIN, HELD_OUT_DEV, assert_resume_is_bit_identical
from prompttune.api import evaluate, held_out
from prompttune.models import EncoderBackbone, load_backbone
from prompttune.tasks import load_task


@pytest.fixture(scope="module")
def encoder():
    return load_backbone("minilm-l6", device="cpu")


@torch.no_grad()
def test_masked_out_deep_prompt_changes_nothing_and_attended_one_does(encoder):
    assert isinstance(encoder, EncoderBackbone)
    ids = encoder.tokenize(["a gorgeous, witty film", "bad"])
    layers, heads, head_dim = encoder.kv_shape
    gen = torch.Generator().manual_seed(0)
    prefix = [(torch.randn(heads, 3, head_dim, generator=gen), torch.randn(heads, 3, head_dim, generator=gen))
              for _ in range(layers)]
    plain = encoder.features(ids)
    assert (encoder.features(ids, prefix) - plain).abs().max() > 1e-3
    single = torch.cat([encoder.features([x]) for x in ids])  # padding does not leak into the pooled features
    assert torch.allclose(single, plain, atol=1e-5)


def test_fine_tune_head_beats_the_encoders_zero_shot(encoder, data_dir, tmp_path):
    common = dict(model=encoder, task="sst2", data_dir=data_dir, shots=16, seed=0, eval_split="dev",
                  eval_limit=HELD_OUT_DEV, progress=False)
    zero = prompttune.train("zero-shot", out=tmp_path / "zs", **common)
    tuned = prompttune.train("fine-tune-head", out=tmp_path / "ft", steps=32, eval_every=8, **common)
    print(f"fine-tune-head (MiniLM): zero-shot {zero.test.accuracy:.3f} -> {tuned.test.accuracy:.3f}")
    assert tuned.test.accuracy >= zero.test.accuracy + GAIN
    # the head starts as the zero-shot classifier, so step 0 is zero-shot on the dev set
    assert tuned.meta["history"][0]["dev_accuracy"] == pytest.approx(zero.dev.accuracy)
    assert tuned.meta["prompt_kind"] == "encoder-head"
    layers, heads, head_dim = encoder.kv_shape
    assert tuned.meta["trainable_parameters"] == 2 * layers * heads * 10 * head_dim + 2 * (encoder.hidden_size + 1)
    predictor = prompttune.load(tmp_path / "ft", model=encoder)  # the saved prompt + head reproduce the score
    sst2 = load_task("sst2", data_dir)
    fewshot = sst2.few_shot(16, 0)
    examples = held_out(sst2, "dev", fewshot.train + fewshot.dev, HELD_OUT_DEV)
    assert evaluate(encoder, sst2, examples, predictor.prompt).accuracy == tuned.test.accuracy
    assert set(predictor.predict(["a gorgeous, witty film", "an utter bore"])) <= {"0", "1"}
    with pytest.raises(prompttune.PromptTuneError, match="is an encoder: it classifies, it does not generate"):
        predictor.generate("a film")


def test_fine_tune_head_resumes_bit_identically(encoder, data_dir, tmp_path):
    assert_resume_is_bit_identical("fine-tune-head", tmp_path, crash_after=3, model=encoder, task="sst2",
                                   data_dir=data_dir, shots=2, seed=0, eval_split="dev", eval_limit=4, steps=4,
                                   eval_every=2, batch_size=2, progress=False)


def test_methods_and_backbones_that_do_not_fit_fail_before_training(encoder, backbone, data_dir, tmp_path):
    with pytest.raises(prompttune.PromptTuneError, match=r"'prompt-tuning' trains on causal-lm backbones; model "
                                                         r"'minilm-l6' is a encoder.*fine-tune-head"):
        prompttune.train("prompt-tuning", encoder, "sst2", data_dir, shots=2, out=tmp_path / "x", progress=False)
    with pytest.raises(prompttune.PromptTuneError, match="'fine-tune-head' trains on encoder backbones"):
        prompttune.train("fine-tune-head", backbone, "sst2", data_dir, shots=2, out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()

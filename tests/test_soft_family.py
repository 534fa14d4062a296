"""The input-embedding soft-prompt family: residual, low-rank (LoPT) and P-tuning prompts."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import prompttune
from helpers import HELD_OUT_DEV, assert_resume_is_bit_identical
from prompttune.artifact import ARTIFACT_TENSORS
from prompttune.methods import get_method


@pytest.mark.parametrize("method", ["residual-prompt-tuning", "lopt", "p-tuning"])
def test_method_beats_zero_shot_and_folds_into_a_plain_prompt(method, backbone, data_dir, tmp_path,
                                                              zero_shot_accuracy):
    report = prompttune.train(method, backbone, "sst2", data_dir, shots=16, seed=0, out=tmp_path / method,
                              eval_split="dev", eval_limit=HELD_OUT_DEV, steps=32, eval_every=8, progress=False)
    print(f"{method}: zero-shot {zero_shot_accuracy:.3f} -> {report.test.accuracy:.3f}")
    assert report.test.accuracy >= zero_shot_accuracy + 0.03
    # the artifact's plain prompt is exactly what the trained network produces
    tensors = load_file(str(tmp_path / method / ARTIFACT_TENSORS))
    cls = get_method(method)
    m = cls.from_params({})
    module = m.build_prompt(torch.zeros(20, backbone.hidden_size) + 0.01)
    module.load_state_dict({k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")})
    with torch.no_grad():
        assert torch.allclose(module(), tensors["prompt"], atol=1e-6)
    assert report.meta["trainable_parameters"] == m.count_trainable(backbone.model.config)
    assert report.meta["trainable_parameters"] == sum(p.numel() for p in module.parameters())


def test_lopt_has_fewer_parameters_than_prompt_tuning(backbone):
    lopt = get_method("lopt").from_params({"rank": 2}).count_trainable(backbone.model.config)
    full = get_method("prompt-tuning").from_params({}).count_trainable(backbone.model.config)
    assert lopt == 2 * (20 + backbone.hidden_size) and lopt < full / 4


@pytest.mark.parametrize("method,extra", [
    ("p-tuning", {"encoder": "lstm", "encoder_hidden": 32}),
    ("prefix-tuning", {"embed_dim": 16, "hidden": 16}),
])
def test_resume_is_bit_identical(method, extra, backbone, data_dir, tmp_path):
    tensors = assert_resume_is_bit_identical(
        method, tmp_path, crash_after=3, model=backbone, task="sst2", data_dir=data_dir, shots=2, seed=0,
        eval_split="dev", eval_limit=4, steps=4, eval_every=2, batch_size=2, progress=False, **extra,
    )
    assert any(k.startswith("module.") for k in tensors)  # the network is saved beside the folded prompt


def test_rank_larger_than_the_prompt_fails_before_training(backbone, data_dir, tmp_path):
    with pytest.raises(prompttune.PromptTuneError, match=r"rank 30 is larger than the prompt \(n_tokens 20\)"):
        prompttune.train("lopt", backbone, "sst2", data_dir, shots=2, out=tmp_path / "x", rank=30, progress=False)
    assert not (tmp_path / "x").exists()


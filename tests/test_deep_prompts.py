"""Deep prompts: P-tuning v2 (per-layer keys/values) and prefix-tuning (MLP-reparameterised, folded)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import prompttune
from helpers import GAIN, HELD_OUT_DEV
from prompttune.artifact import ARTIFACT_TENSORS
from prompttune.prompts.deep import DeepPrompt, PrefixPrompt

TEXTS = ["Review: a gorgeous, witty film\nSentiment:", "Review: bad\nSentiment:", "The capital of France is"]


@torch.no_grad()
def test_deep_prompt_from_a_soft_prompt_behaves_exactly_like_it(backbone):
    soft = backbone.embed(torch.arange(100, 110)).detach()
    prefix = backbone.prefix_from_embeddings(soft)
    ids = backbone.tokenize(TEXTS)
    torch.manual_seed(0)
    for words in ([[" negative"], [" positive"]], [[" not good at all"], [" positive"]]):
        labels = backbone.label_words(words)
        reference = backbone.score(ids, labels, soft)
        for module in (DeepPrompt(prefix), PrefixPrompt(prefix)):
            assert torch.allclose(backbone.score(ids, labels, module()), reference, atol=1e-4)
    # generation behind learned keys/values (our own cached loop) matches HF generate with the soft prompt
    deep = DeepPrompt(prefix)()
    assert backbone.generate(TEXTS, deep, max_new_tokens=8) == backbone.generate(TEXTS, soft, max_new_tokens=8)
    assert backbone.generate(TEXTS[:2], deep, max_new_tokens=8) == [
        backbone.generate([t], deep, max_new_tokens=8)[0] for t in TEXTS[:2]
    ]


@pytest.mark.parametrize("method", ["p-tuning-v2", "prefix-tuning"])
def test_deep_method_beats_zero_shot_and_round_trips(method, backbone, data_dir, tmp_path, zero_shot_accuracy):
    report = prompttune.train(method, backbone, "sst2", data_dir, shots=16, seed=0, out=tmp_path / method,
                              eval_split="dev", eval_limit=HELD_OUT_DEV, steps=32, eval_every=8, progress=False)
    print(f"{method}: zero-shot {zero_shot_accuracy:.3f} -> {report.test.accuracy:.3f}")
    assert report.test.accuracy >= zero_shot_accuracy + GAIN
    assert report.meta["prompt_kind"] == "kv"
    tensors = load_file(str(tmp_path / method / ARTIFACT_TENSORS))
    assert tensors["keys"].shape == (30, 3, 20, 64) == tensors["values"].shape
    predictor = prompttune.load(tmp_path / method, model=backbone)
    texts = ["a gorgeous, witty film", "an utter bore"]
    prefix = list(zip(tensors["keys"], tensors["values"], strict=True))
    with torch.no_grad():
        direct = torch.log_softmax(backbone.score(backbone.tokenize([predictor.render(t) for t in texts]),
                                                  predictor.label_words, prefix), -1)
    assert torch.equal(predictor.scores(texts), direct)
    assert isinstance(predictor.generate(texts[0], max_new_tokens=4), str)


def test_deep_prompt_on_a_model_without_a_kv_cache_fails_before_training(backbone, data_dir, tmp_path):
    """A state-space model (a tiny random Mamba, the real architecture) has no key/value cache."""
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    cfg = MambaConfig(vocab_size=backbone.vocab_size, hidden_size=32, state_size=4, num_hidden_layers=2, expand=2)
    MambaForCausalLM(cfg).save_pretrained(tmp_path / "mamba")
    backbone.tokenizer.save_pretrained(tmp_path / "mamba")
    for method in ("prefix-tuning", "p-tuning-v2"):
        with pytest.raises(prompttune.PromptTuneError, match=rf"method '{method}' needs a model whose KV cache can "
                                                              r"take a prefix; model '.*mamba' \(MambaForCausalLM\)"):
            prompttune.train(method, str(tmp_path / "mamba"), "sst2", data_dir, shots=2, out=tmp_path / "x",
                             progress=False)
        assert not (tmp_path / "x").exists()

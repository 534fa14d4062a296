"""The second built-in alias: Gemma 3 270M (GGUF from PyPI, Gemma's scaled embeddings, 262k vocab)."""

from __future__ import annotations

import pytest
import torch

from prompttune.testing import score_reference


@pytest.fixture(scope="module")
def gemma():
    from prompttune.models import load_backbone

    return load_backbone("gemma3-270m", device="cpu")


@torch.no_grad()
def test_gemma_scores_equal_full_logits_and_generation_is_padding_invariant(gemma):
    assert type(gemma.model).__name__ == "Gemma3ForCausalLM"
    texts = ["Review: a gorgeous, witty film\nSentiment:", "Review: bad\nSentiment:"]
    ids = gemma.tokenize(texts)
    assert ids[0][0] == gemma.tokenizer.bos_token_id  # the prompt goes before BOS, as in PEFT
    prompt = gemma.embed(torch.arange(1000, 1008)).detach()
    for words in ([[" negative"], [" positive"]], [[" not good at all"], [" positive"]]):
        labels = gemma.label_words(words)
        fast, reference = gemma.score(ids, labels, prompt), score_reference(gemma, ids, labels, prompt)
        assert torch.allclose(fast, reference, atol=1e-4), (fast - reference).abs().max()
    batched = gemma.generate(texts, prompt, max_new_tokens=6)
    assert batched == [gemma.generate([t], prompt, max_new_tokens=6)[0] for t in texts]


def test_gemma_refuses_a_smollm2_artifact(gemma, backbone, data_dir, tmp_path):
    import prompttune

    prompttune.train("zero-shot", backbone, "sst2", data_dir, shots=2, out=tmp_path / "zs", eval_limit=4,
                     progress=False)
    with pytest.raises(prompttune.PromptTuneError, match="trained on backbone 'smollm2-135m'"):
        prompttune.load(tmp_path / "zs", model=gemma)

"""Generation with a soft prompt in place: left-padded batches give what single inputs give."""

from __future__ import annotations

import pytest
import torch


def test_generate_with_soft_prompt_left_padded_matches_unpadded(backbone):
    prompt = backbone.embed(torch.arange(300, 310)).detach()
    texts = ["The capital of France is", "Here is a short story about a dog who learned to play the piano:"]
    batched = backbone.generate(texts, prompt, max_new_tokens=12)
    single = [backbone.generate([t], prompt, max_new_tokens=12)[0] for t in texts]
    assert batched == single
    assert all(len(s.strip()) > 0 for s in batched)
    # the prompt changes what is generated, so it really is in place
    assert backbone.generate(texts, None, max_new_tokens=12) != batched


# Inputs of different lengths whose continuations reach a newline within a few tokens.
STOP_TEXTS = [
    "Input: cat\nOutput: cats\nInput: dog\nOutput:",
    "Input: box\nOutput:",
    "Input: a tiny mouse that lives in the old house on the hill\nOutput: tiny mice\nInput: child\nOutput:",
    "Translate to French: good morning\nFrench:",
    "Q: What is two plus two?\nA:",
]


def _prompts(bb) -> dict:
    from prompttune.models import DeltaPrompt
    from prompttune.prompts.instance import InstancePrompt

    g = torch.Generator().manual_seed(0)
    soft = bb.embed(torch.arange(300, 306)).detach() + 0.02 * torch.randn(6, bb.hidden_size, generator=g)
    instance = InstancePrompt(soft, bottleneck=8)
    torch.nn.init.normal_(instance.up.weight, std=0.05, generator=g)
    return {
        "none": None,
        "soft": soft,
        "delta": DeltaPrompt(soft, 0.05 * torch.randn(12, bb.hidden_size, generator=g)),
        "deep": bb.prefix_from_embeddings(soft + 0.05 * torch.randn(soft.shape, generator=g)),
        "per-example": torch.stack([soft * (1 + 0.1 * i) for i in range(len(STOP_TEXTS))]),
        "instance": instance,
    }


def _one(prompt, i):
    """Example i's prompt when it runs alone (a per-example prompt keeps its row)."""
    return prompt[i : i + 1] if torch.is_tensor(prompt) and prompt.dim() == 3 else prompt


@pytest.mark.parametrize("kind", ["none", "soft", "delta", "deep", "per-example", "instance"])
def test_batched_generation_with_stop_equals_one_at_a_time(backbone, kind):
    prompt = _prompts(backbone)[kind]
    batched = backbone.generate(STOP_TEXTS, prompt, max_new_tokens=10, stop=["\n"])
    single = [backbone.generate([t], _one(prompt, i), max_new_tokens=10, stop=["\n"])[0]
              for i, t in enumerate(STOP_TEXTS)]
    assert batched == single, kind
    assert all("\n" not in s for s in batched)
    # small chunks (and the sorting by length inside) keep the input order
    assert backbone.generate(STOP_TEXTS, prompt, max_new_tokens=10, stop=["\n"], batch_size=2) == batched


def test_stop_strings_cut_the_output_and_end_generation_early(backbone):
    from transformers import StoppingCriteria, StoppingCriteriaList

    texts = STOP_TEXTS[:3]
    free = backbone.generate(texts, None, max_new_tokens=16)
    assert all("\n" in s for s in free), free  # each continuation writes a newline, then goes on
    steps = []

    class Steps(StoppingCriteria):  # a caller's own criterion still runs, beside the stop strings
        def __call__(self, input_ids, scores, **kwargs):
            steps.append(input_ids.shape[1])
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    cut = backbone.generate(texts, None, max_new_tokens=16, stop=["\n"],
                            stopping_criteria=StoppingCriteriaList([Steps()]))
    assert cut == [s[: s.index("\n")] for s in free]
    assert max(steps) < 16  # every row wrote its newline, so the batch ended before max_new_tokens
    several = backbone.generate(texts, None, max_new_tokens=16, stop=["Input", "\n"])
    assert several == [s[: min(i for i in (s.find("Input"), s.find("\n")) if i >= 0)] for s in free]


def test_generate_refuses_bad_stop_strings(backbone):
    from prompttune.errors import ConfigError

    for stop in ("\n", [""], ["\n", 3]):
        with pytest.raises(ConfigError, match="stop must be a list of non-empty strings"):
            backbone.generate(["Hello"], None, max_new_tokens=2, stop=stop)

"""Generation with a soft prompt in place: left-padded batches give what single inputs give."""

from __future__ import annotations

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

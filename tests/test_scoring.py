"""The backbone's fast label scoring is exact and cheaper; prompts are placed right under any padding."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from prompttune.testing import score_padded, score_reference

TEXTS = [
    "Review: a gorgeous, witty, seductive movie.\nSentiment:",
    "Review: bad\nSentiment:",
    "Review: the plot is a mess, the jokes are stale and the whole thing runs twenty minutes too long.\nSentiment:",
    "Review: it 's a charming and often affecting journey.\nSentiment:",
]


def _prompt(backbone, n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = 0.02 * torch.randn(n, backbone.hidden_size, generator=g)
    return backbone.embed(torch.arange(200, 200 + n)).detach() + noise


@pytest.fixture(params=["shared-prefix", "inline-prompt"])
def prompt_mode(request, backbone):
    """Both ways `score` can place the prompt: keys/values shared across the batch, or inline."""
    before = backbone.share_prompt_prefix
    backbone.share_prompt_prefix = request.param == "shared-prefix"
    yield request.param
    backbone.share_prompt_prefix = before


@torch.no_grad()
def test_label_scores_equal_full_logits(backbone, prompt_mode):
    ids = backbone.tokenize(TEXTS)
    labels = backbone.label_words([[" negative"], [" positive"]])
    for prompt in (None, _prompt(backbone)):
        fast = backbone.score(ids, labels, prompt)
        reference = score_reference(backbone, ids, labels, prompt)
        assert torch.allclose(fast, reference, atol=1e-4), (fast - reference).abs().max()
        # several rows of packing give the same numbers
        assert torch.allclose(backbone.score(ids, labels, prompt, max_row_tokens=30), reference, atol=1e-4)


@torch.no_grad()
def test_multi_token_and_multi_word_labels_equal_full_logits(backbone, prompt_mode):
    ids = backbone.tokenize(TEXTS)
    labels = backbone.label_words([[" not good at all", " awful"], [" positive"], [" extraordinarily wonderful"]])
    assert labels.needs_full_softmax and max(len(w) for w in labels.flat) > 2
    for prompt in (None, _prompt(backbone)):
        fast = backbone.score(ids, labels, prompt)
        reference = score_reference(backbone, ids, labels, prompt)
        assert torch.allclose(fast, reference, atol=1e-4), (fast - reference).abs().max()


@torch.no_grad()
def test_prompt_placement_under_left_and_right_padding(backbone):
    ids = backbone.tokenize(TEXTS)
    labels = backbone.label_words([[" negative"], [" positive"]])
    prompt = _prompt(backbone)
    packed = backbone.score(ids, labels, prompt)
    for side in ("left", "right"):
        padded = score_padded(backbone, ids, labels, prompt, padding_side=side)
        assert torch.allclose(padded, packed, atol=1e-4), (side, (padded - packed).abs().max())
    embeds, mask, positions, answer = backbone.padded_inputs(ids, prompt, padding_side="left")
    short = min(range(len(ids)), key=lambda i: len(ids[i]))
    pads = embeds.shape[1] - len(ids[short]) - prompt.shape[0]
    assert pads > 0 and mask[short, :pads].sum() == 0 and mask[short, pads:].all()
    assert torch.allclose(embeds[short, pads : pads + prompt.shape[0]], prompt)  # prompt right after the pads
    assert positions[short, pads] == 0 and positions[short, -1] == prompt.shape[0] + len(ids[short]) - 1


def test_prompt_gradients_equal_padded_reference(backbone, prompt_mode):
    ids = backbone.tokenize(TEXTS)
    labels = backbone.label_words([[" negative"], [" positive"]])
    golds = torch.tensor([1, 0, 0, 1])
    grads = []
    for fn in (backbone.score, lambda i, lab, p: score_padded(backbone, i, lab, p, padding_side="left")):
        prompt = _prompt(backbone).requires_grad_(True)
        torch.nn.functional.cross_entropy(fn(ids, labels, prompt), golds).backward()
        grads.append(prompt.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5), (grads[0] - grads[1]).abs().max()


def test_label_scoring_is_cheaper_than_full_logits(backbone):
    ids = backbone.tokenize(TEXTS * 2)
    labels = backbone.label_words([[" negative"], [" positive"]])
    prompt = _prompt(backbone, n=20)
    with torch.no_grad(), FlopCounterMode(display=False) as ours:
        backbone.score(ids, labels, prompt)
    embeds, mask, positions, _ = backbone.padded_inputs(ids, prompt, padding_side="right")
    with torch.no_grad(), FlopCounterMode(display=False) as full:
        backbone.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
    ratio = ours.get_total_flops() / full.get_total_flops()
    assert ratio < 0.8, f"label scoring used {ratio:.2f} of the full-logits FLOPs"


def test_prompt_stays_fp32_when_model_runs_in_bf16():
    from prompttune.models import load_backbone
    from prompttune.prompts import SoftPrompt

    bf16 = load_backbone("smollm2-135m", device="cpu", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    prompt = SoftPrompt.initialise(bf16, 5, "vocab")
    labels = bf16.label_words([[" negative"], [" positive"]])
    opt = torch.optim.AdamW(prompt.parameters(), lr=0.01)
    scores = bf16.score(bf16.tokenize(TEXTS[:2]), labels, prompt())
    loss = torch.nn.functional.cross_entropy(scores, torch.tensor([1, 0]))
    loss.backward()
    opt.step()
    assert prompt.weight.dtype == torch.float32 and prompt.weight.grad.dtype == torch.float32
    assert torch.isfinite(prompt.weight.grad).all() and prompt.weight.grad.abs().sum() > 0

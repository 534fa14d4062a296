"""CoOp epoch time: prompttune (image features cached once) vs. the reference loop (images encoded every step).

The reference is how the paper code (Dassl) trains CoOp: every step loads its batch of images,
runs them through the frozen image tower, then the text tower with the context, and steps. Ours
runs each image through the tower once (the content-addressed feature cache) and every step costs
only the text side, batched over all classes. Both loops share the prompt module, the init, the
batch order and the optimizer, so they learn the same context: the benchmark checks that (max
difference of the learned context) and scores both on the same held-out test images.

Two models, side by side:
- `--arch vit-b-16` (default) or `vit-b-32`: a CLIPModel with those tower sizes (224 px; random weights,
  as no pretrained CLIP can be downloaded here): the cost shape of the CLIP the papers use. Its
  accuracy is near chance; what matters is that both loops get the same one.
- `lit`: the LiT-style MiniLM + tiny-ViT dual encoder of `prompttune.testing`, which really learns.

Usage: python benchmarks/coop_epoch.py [--shots 16] [--epochs 2] [--test-per-class 50]
Last line: speedup_vs_reference=<x> ours_acc=<a> reference_acc=<a> (the --arch run), then the LiT run's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from prompttune.methods.family.clip import local_labels
from prompttune.models.clip import ClipBackbone, cosine_logits, load_clip_backbone
from prompttune.models.feature_cache import cached_image_features, clear_memory
from prompttune.prompts.clip import ClipPrompt, PromptShape, context_init
from prompttune.tasks.images import ImageTask, load_image_task
from prompttune.testing import VIT_B_16, VIT_B_32, lit_fashion_model, tiny_clip


def batches(n: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).tolist()
        out += [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return out


def train(bb: ClipBackbone, task: ImageTask, train_idx: list[int], classes: list[int], plan: list[list[int]],
          cached: bool, lr: float = 0.002) -> tuple[ClipPrompt, list[float], float]:
    """One CoOp training run; returns the prompt, the seconds of each step, and the one-time cache seconds."""
    prompt = ClipPrompt(PromptShape(n_ctx=4), bb, len(classes), context_init(bb, "a photo of a", 4),
                        torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(prompt.parameters(), lr=lr, weight_decay=0.0)
    ids, mask = bb.class_token_ids([f"{task.classes[c]}." for c in classes], 4)
    y = local_labels(task.train.labels[train_idx], classes)
    scale = bb.logit_scale
    t0 = time.perf_counter()
    feats = cached_image_features(bb, task.train, train_idx) if cached else None
    cache_seconds = time.perf_counter() - t0
    step_seconds = []
    for batch in plan:
        t = time.perf_counter()
        if cached:
            img = feats[batch]
        else:  # the Dassl way: load, preprocess and encode the batch's images at every step
            with torch.no_grad():
                img = bb.encode_images(bb.preprocess(task.train.images([train_idx[i] for i in batch])))
        logits = cosine_logits(img, prompt.class_text_features(bb, ids, mask), scale)
        loss = F.cross_entropy(logits, y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step_seconds.append(time.perf_counter() - t)
    return prompt, step_seconds, cache_seconds


def accuracy(bb: ClipBackbone, task: ImageTask, prompt: ClipPrompt, classes: list[int], test_idx: list[int],
             cached: bool) -> float:
    ids, mask = bb.class_token_ids([f"{task.classes[c]}." for c in classes], 4)
    with torch.no_grad():
        txt = prompt.class_text_features(bb, ids, mask)
        if cached:
            img = cached_image_features(bb, task.test, test_idx)
        else:
            img = torch.cat([bb.encode_images(bb.preprocess(task.test.images(test_idx[i:i + 64])))
                             for i in range(0, len(test_idx), 64)])
    y = local_labels(task.test.labels[test_idx], classes)
    return float((cosine_logits(img, txt, bb.logit_scale).argmax(-1) == y).float().mean())


def run(name: str, bb: ClipBackbone, task: ImageTask, args) -> dict:
    classes = list(task.base_classes)
    few = task.few_shot(args.shots, seed=0, base_only=True)
    steps_per_epoch = (len(few.train) + args.batch_size - 1) // args.batch_size
    plan = batches(len(few.train), args.batch_size, args.epochs, seed=0)
    test_idx = task.test_indices(classes, args.test_per_class)
    clear_memory()
    ref_prompt, ref_steps, _ = train(bb, task, few.train, classes, plan, cached=False)
    ours_prompt, our_steps, cache_s = train(bb, task, few.train, classes, plan, cached=True)
    ref_epoch = sum(ref_steps) / args.epochs
    our_epoch = sum(our_steps) / args.epochs
    ref_acc = accuracy(bb, task, ref_prompt, classes, test_idx, cached=False)
    our_acc = accuracy(bb, task, ours_prompt, classes, test_idx, cached=True)
    ctx_diff = float((ref_prompt.ctx - ours_prompt.ctx).abs().max().detach())
    # a CoOp schedule of 50 epochs, the cache build included (CoOp trains 16-shot runs for 200)
    amortised = (ref_epoch * 50) / (cache_s + our_epoch * 50)
    print(f"{name}: {len(few.train)} images, {steps_per_epoch} steps/epoch; reference epoch {ref_epoch:.3f}s, "
          f"ours {our_epoch:.3f}s (+ {cache_s:.2f}s once to cache features); speedup per epoch "
          f"{ref_epoch / our_epoch:.1f}x, over 50 epochs incl. the cache {amortised:.1f}x; accuracy on "
          f"{len(test_idx)} test images: ours {our_acc:.4f}, reference {ref_acc:.4f}; max context difference "
          f"{ctx_diff:.2e}", flush=True)
    return {"speedup": ref_epoch / our_epoch, "ours_acc": our_acc, "ref_acc": ref_acc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--test-per-class", type=int, default=50)
    ap.add_argument("--arch", choices=["vit-b-16", "vit-b-32"], default="vit-b-16",
                    help="tower sizes of the random-weight CLIP timed beside the LiT model")
    args = ap.parse_args()
    task = load_image_task("fashion-mnist")
    lit_dir = lit_fashion_model()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PROMPTTUNE_CACHE"] = tmp  # a cold feature cache: its build time is measured, not skipped
        sizes = VIT_B_16 if args.arch == "vit-b-16" else VIT_B_32
        big = load_clip_backbone(str(tiny_clip(Path(tmp) / args.arch, sizes=sizes)), device="cpu")
        b32 = run(f"{args.arch} (random weights)", big, task, args)
        lit = run("lit (MiniLM + tiny ViT)", load_clip_backbone(str(lit_dir), device="cpu"), task, args)
    print(f"speedup_vs_reference={b32['speedup']:.1f} ours_acc={b32['ours_acc']:.4f} "
          f"reference_acc={b32['ref_acc']:.4f} lit_speedup={lit['speedup']:.2f} lit_ours_acc={lit['ours_acc']:.4f} "
          f"lit_reference_acc={lit['ref_acc']:.4f}")


if __name__ == "__main__":
    main()

"""What the CLIP prompt-learning methods share: the run context, the training loop and the predictor.

A CLIP method describes its prompt (`prompt_shape`) and its loss (`loss`, given the prompted logits
and features plus the frozen zero-shot ones); `ClipMethod.fit` does the rest with the shared
trainer (checkpoints, resume, best-on-dev). When the prompt leaves the image tower alone, the
train/dev/test images go through it once (the feature cache) and every step costs only the text
side, batched over all classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from ...errors import ConfigError
from ...models.clip import ClipBackbone, cosine_logits
from ...models.feature_cache import cached_image_features
from ...prompts.clip import ClipPrompt, PromptShape, context_init
from ...tasks.images import ImageSplit, ImageTask
from ...training import Evaluation, TrainConfig, train_prompt
from ..base import Method, MethodConfig, MethodResult, RunContext


class ClipConfig(MethodConfig):
    n_tokens: int = Field(4, ge=1, le=32, description="context tokens before the class name")
    ctx_init: str | None = Field("a photo of a", description="initial context words (random when their token "
                                                              "count differs from n_tokens, or None)")
    steps: int = Field(100, ge=1)
    lr: float = Field(0.002, gt=0)
    batch_size: int = Field(32, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    eval_every: int = Field(25, ge=1)


def zero_shot_text_features(backbone: ClipBackbone, task: ImageTask, classes: list[int],
                            templates: list[str] | None = None, weights: list[float] | None = None) -> torch.Tensor:
    """Normalised hand-written-prompt features per class (classes, dim), averaged over templates."""
    templates = templates or task.templates[:1]
    weights = weights or [1.0 / len(templates)] * len(templates)
    total = 0
    for t, w in zip(templates, weights, strict=True):
        feats = F.normalize(backbone.encode_texts(task.prompts_for(classes, t)), dim=-1)
        total = total + w * feats
    return F.normalize(total, dim=-1)


def local_labels(labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Task labels -> positions in `classes` (the classifier's output order)."""
    pos = {c: i for i, c in enumerate(classes)}
    return torch.tensor([pos[int(y)] for y in labels], dtype=torch.long)


@dataclass
class Batch:
    """One step's inputs and the frozen references a regulariser compares against."""

    logits: torch.Tensor
    labels: torch.Tensor
    image_features: torch.Tensor
    text_features: torch.Tensor
    zs_text: torch.Tensor  # (classes, dim) normalised hand-written-prompt features
    zs_image: torch.Tensor | None  # (batch, dim) frozen image features (when the image side is prompted)
    zs_logits: torch.Tensor


class ClipMethod(Method):
    backbone_kinds: ClassVar[tuple[str, ...]] = ("clip",)
    Config = ClipConfig

    @classmethod
    def predictor_class(cls) -> type[ClipPredictor]:
        """What applies this method's artifacts (TPT tunes per test image)."""
        return ClipPredictor

    def prompt_shape(self, backbone: ClipBackbone) -> PromptShape:
        return PromptShape(n_ctx=self.config.n_tokens)

    def loss(self, batch: Batch, prompt: ClipPrompt) -> torch.Tensor:
        return F.cross_entropy(batch.logits, batch.labels)

    def zero_shot_templates(self, task: ImageTask) -> list[str]:
        """Templates of the frozen reference text features (PromptSRC overrides: all of the task's)."""
        return task.templates[:1]

    def wrap(self, prompt: ClipPrompt) -> torch.nn.Module:
        """The module the trainer optimises and checkpoints (PromptSRC adds its running average)."""
        return prompt

    def finish(self, prompt: ClipPrompt, module: torch.nn.Module, outcome) -> dict[str, torch.Tensor]:
        """The prompt's tensors to save: by default the best on dev."""
        return outcome.best_state

    def train_config(self) -> TrainConfig:
        c = self.config
        return TrainConfig(steps=c.steps, lr=c.lr, batch_size=c.batch_size, warmup_ratio=c.warmup_ratio,
                           weight_decay=c.weight_decay, eval_every=c.eval_every)

    def fit(self, ctx: RunContext) -> MethodResult:
        bb, task, data = ctx.backbone, ctx.task, ctx.data
        classes = data.classes
        shape = self.prompt_shape(bb)
        gen = torch.Generator().manual_seed(ctx.seed)
        prompt = ClipPrompt(shape, bb, len(classes), context_init(bb, self.config.ctx_init, shape.n_ctx),
                            gen).to(bb.device)
        ids, mask = bb.class_token_ids([f"{task.classes[c]}." for c in classes], shape.n_ctx)
        zs_text = zero_shot_text_features(bb, task, classes, self.zero_shot_templates(task)).to(bb.device)
        frozen = prompt.image_side_frozen
        train_feats = cached_image_features(bb, task.train, data.train).to(bb.device)
        dev_feats = cached_image_features(bb, task.train, data.dev).to(bb.device)
        train_images = None if frozen else task.train.images(data.train)
        dev_images = None if frozen else task.train.images(data.dev)
        y_train = local_labels(task.train.labels[data.train], classes).to(bb.device)
        y_dev = local_labels(task.train.labels[data.dev], classes).to(bb.device)
        scale = bb.logit_scale

        def forward(feats: torch.Tensor, images: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
            img = feats if images is None else bb.encode_images(bb.preprocess(images), prompt.vision_prompts())
            txt = prompt.class_text_features(bb, ids, mask, F.normalize(img.float(), dim=-1)
                                             if shape.conditional else None)
            return cosine_logits(img, txt, scale), img, txt

        def loss_fn(indices) -> torch.Tensor:
            idx = torch.as_tensor(list(indices), device=bb.device)
            images = None if frozen else train_images[idx.cpu()]
            logits, img, txt = forward(train_feats[idx], images)
            zs_logits = cosine_logits(train_feats[idx], zs_text, scale)
            batch = Batch(logits, y_train[idx], img, txt, zs_text, None if frozen else train_feats[idx], zs_logits)
            return self.loss(batch, prompt)

        def eval_fn() -> Evaluation:
            with torch.no_grad():
                logits = torch.cat([forward(dev_feats[i:i + 64], None if frozen else dev_images[i:i + 64])[0]
                                    for i in range(0, len(y_dev), 64)])
            return Evaluation(accuracy=float((logits.argmax(-1) == y_dev).float().mean()),
                              loss=float(F.cross_entropy(logits, y_dev)))

        module = self.wrap(prompt)
        outcome = train_prompt(module, loss_fn, eval_fn, len(data.train), self.train_config(), ctx.seed,
                               ctx.out_dir, resume=ctx.resume, progress=ctx.progress,
                               param_groups=self.param_groups(prompt), callbacks=ctx.callbacks,
                               fingerprint=ctx.run_fingerprint)
        state = self.finish(prompt, module, outcome)
        trainable = sum(p.numel() for p in prompt.parameters() if p.requires_grad)
        return MethodResult("clip", {k: v.detach().cpu() for k, v in state.items()}, trainable, outcome.history,
                            info={"prompt_shape": shape.to_json(), "best_step": outcome.best_step})

    def param_groups(self, prompt: ClipPrompt) -> list[dict[str, Any]] | None:
        return None


# --------------------------------------------------------------------------- applying an artifact

class ClipPredictor:
    """Applies a CLIP artifact (learned context, deep prompts, or a zero-shot template ensemble) to images."""

    def __init__(self, backbone: ClipBackbone, meta: dict[str, Any], tensors: dict[str, torch.Tensor],
                 task: ImageTask):
        self.backbone = backbone
        self.meta = meta
        self.task = task
        self.prompt: ClipPrompt | None = None
        self._text_memo: dict[tuple[int, ...], torch.Tensor] = {}
        shape = meta.get("prompt_shape")
        if shape:
            self.shape = PromptShape(**shape)
            n_trained = len(meta["task"]["trained_classes"])
            self.prompt = ClipPrompt(self.shape, backbone, n_trained).to(backbone.device)
            missing, unexpected = self.prompt.load_state_dict({k: v.to(backbone.device) for k, v in tensors.items()},
                                                              strict=False)
            if missing or unexpected:
                raise ConfigError(f"artifact tensors do not fit its prompt shape (missing {missing}, "
                                  f"unexpected {unexpected})")
            self.prompt.requires_grad_(False)

    @property
    def image_side_frozen(self) -> bool:
        return self.prompt is None or self.prompt.image_side_frozen

    def class_features(self, classes: list[int], image_features: torch.Tensor | None = None) -> torch.Tensor:
        bb = self.backbone
        if self.prompt is None:
            zs = self.meta["zero_shot"]
            return zero_shot_text_features(bb, self.task, classes, zs["templates"], zs["weights"])
        if self.shape.class_specific and classes != self.meta["task"]["trained_classes"]:
            raise ConfigError("a class-specific context only applies to the classes it was trained on "
                              f"({self.meta['task']['trained_classes']})")
        ids, mask = bb.class_token_ids([f"{self.task.classes[c]}." for c in classes], self.shape.n_ctx)
        return self.prompt.class_text_features(bb, ids, mask, image_features)

    def logits(self, split: ImageSplit, indices: list[int], classes: list[int], batch_size: int = 128) -> torch.Tensor:
        bb = self.backbone
        scale = bb.logit_scale
        out = []
        with torch.no_grad():
            if self.image_side_frozen:
                feats = cached_image_features(bb, split, indices).to(bb.device)
                conditional = self.prompt is not None and self.shape.conditional
                if not conditional:
                    txt = self.class_features(classes)
                    return cosine_logits(feats, txt, scale).cpu()
                for i in range(0, len(indices), batch_size):
                    f = feats[i:i + batch_size]
                    out.append(cosine_logits(f, self.class_features(classes, F.normalize(f, dim=-1)), scale).cpu())
            else:
                txt = self.class_features(classes)
                for i in range(0, len(indices), batch_size):
                    pix = bb.preprocess(split.images(indices[i:i + batch_size]))
                    img = bb.encode_images(pix, self.prompt.vision_prompts())
                    out.append(cosine_logits(img, txt, scale).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(classes))

    def all_classes(self) -> list[int]:
        """The classes this artifact can name: all of the task's, or the trained ones for a class-specific context."""
        if self.prompt is not None and self.shape.class_specific:
            return list(self.meta["task"]["trained_classes"])
        return list(range(len(self.task.classes)))

    def probabilities(self, images: Sequence[torch.Tensor], classes: list[int] | None = None) -> torch.Tensor:
        """Class probabilities (n, classes) of uint8 images (H, W, 3), any sizes, held in memory (serving, predict).

        Unlike `logits` this never touches the feature cache: one-off images would only fill it. The
        class text features of a context that does not depend on the image are computed once per class list."""
        bb, classes = self.backbone, classes if classes is not None else self.all_classes()
        with torch.no_grad():
            pixels = torch.cat([bb.preprocess(im.unsqueeze(0)) for im in images])
            vision = None if self.image_side_frozen else self.prompt.vision_prompts()
            feats = bb.encode_images(pixels, vision).float()
            if self.prompt is not None and self.shape.conditional:
                text = self.class_features(classes, F.normalize(feats, dim=-1))
            else:
                key = tuple(classes)
                if key not in self._text_memo:
                    self._text_memo[key] = self.class_features(classes)
                text = self._text_memo[key]
            return cosine_logits(feats, text, bb.logit_scale).softmax(-1).cpu()

    def classify(self, images: Sequence[torch.Tensor]) -> list[tuple[str, dict[str, float]]]:
        """Per image, the predicted class name and the probability of every class it can name."""
        names = [self.task.classes[c] for c in self.all_classes()]
        rows = self.probabilities(images, self.all_classes()).tolist()
        return [(names[max(range(len(r)), key=r.__getitem__)], dict(zip(names, r, strict=True))) for r in rows]

    def accuracy(self, split: ImageSplit, indices: list[int], classes: list[int]) -> float:
        if not indices:
            return float("nan")
        logits = self.logits(split, indices, classes)
        y = local_labels(split.labels[indices], classes)
        return float((logits.argmax(-1) == y).float().mean())

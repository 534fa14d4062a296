"""TPT (Shu et al., 2022): test-time prompt tuning, one image at a time.

Nothing is trained ahead: the artifact holds the starting context (the hand-written words, or the
context of a CoOp artifact given as `init_from`) and the test-time settings. For each test image the
predictor makes `views - 1` random resized crops (with flips) besides the image itself, keeps the
`select` share of views with the lowest prediction entropy (confidence selection), takes `steps`
AdamW steps on the context to minimise the entropy of their averaged prediction, predicts the
original image, and resets the context. Image features of the views come from the frozen tower.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import load_file

from ..artifact import backbone_matches
from ..errors import ConfigError
from ..models.clip import ClipBackbone, cosine_logits
from ..prompts.clip import ClipPrompt, PromptShape, context_init
from ..tasks.images import ImageSplit, stack_images
from .base import MethodConfig, MethodResult, RunContext, register
from .family.clip import ClipMethod, ClipPredictor


class TPTConfig(MethodConfig):
    n_tokens: int = Field(4, ge=1, le=32)
    ctx_init: str | None = "a photo of a"
    init_from: str | None = Field(None, description="a coop artifact directory whose context TPT starts from")
    views: int = Field(32, ge=2, description="augmented views per test image, the image itself included")
    select: float = Field(0.1, gt=0, le=1, description="share of the most confident views kept")
    steps: int = Field(1, ge=1, description="test-time optimisation steps per image")
    lr: float = Field(5e-3, gt=0)


def _augment(image: torch.Tensor, n: int, generator: torch.Generator, min_scale: float = 0.3) -> torch.Tensor:
    """`n` random resized crops (area share in [min_scale, 1], aspect in [3/4, 4/3]) with random flips."""
    h, w = image.shape[:2]
    x = image.permute(2, 0, 1).float().unsqueeze(0)
    out = []
    for _ in range(n):
        area = h * w * (min_scale + (1 - min_scale) * float(torch.rand((), generator=generator)))
        ratio = float(torch.exp(torch.empty(()).uniform_(-0.2877, 0.2877, generator=generator)))
        ch = max(1, min(h, int(round((area / ratio) ** 0.5))))
        cw = max(1, min(w, int(round((area * ratio) ** 0.5))))
        top = int(torch.randint(0, h - ch + 1, (), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (), generator=generator))
        crop = F.interpolate(x[:, :, top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                             align_corners=False)
        if float(torch.rand((), generator=generator)) < 0.5:
            crop = crop.flip(-1)
        out.append(crop)
    return torch.cat(out).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


@register
class TPT(ClipMethod):
    name = "tpt"
    description = "TPT: test-time prompt tuning per image (entropy of confident augmented views)."
    Config = TPTConfig


    @classmethod
    def predictor_class(cls) -> type[ClipPredictor]:
        return TPTPredictor

    def fit(self, ctx: RunContext) -> MethodResult:
        bb, cfg = ctx.backbone, self.config
        init = context_init(bb, cfg.ctx_init, cfg.n_tokens)
        n_ctx = cfg.n_tokens
        if cfg.init_from:
            root = Path(cfg.init_from)
            meta_path = root / "prompt.json"
            if not meta_path.exists():
                raise ConfigError(f"tpt init_from: {root} is not an artifact directory (no prompt.json)")
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            shape = meta.get("prompt_shape") or {}
            if meta.get("method") != "coop" or shape.get("class_specific"):
                raise ConfigError(f"tpt init_from: {root} holds a '{meta.get('method')}' artifact; TPT starts from "
                                  "a unified-context coop artifact")
            if not backbone_matches(meta["backbone"], bb):
                raise ConfigError(f"tpt init_from: {root} was trained on {meta['backbone']['id']}, not on "
                                  f"{bb.model_id}")
            init = load_file(str(root / "prompt.safetensors"))["ctx"]
            n_ctx = init.shape[0]
        gen = torch.Generator().manual_seed(ctx.seed)
        prompt = ClipPrompt(PromptShape(n_ctx=n_ctx), bb, len(ctx.data.classes), init, gen)
        test_time = {"views": cfg.views, "select": cfg.select, "steps": cfg.steps, "lr": cfg.lr, "seed": ctx.seed}
        return MethodResult("clip", {k: v.detach() for k, v in prompt.state_dict().items()}, 0,
                            info={"prompt_shape": prompt.shape.to_json(), "test_time": test_time})


class TPTPredictor(ClipPredictor):
    """Applies a TPT artifact: tunes a copy of the context on each test image's views."""

    def probabilities(self, images: Sequence[torch.Tensor], classes: list[int] | None = None) -> torch.Tensor:
        classes = classes if classes is not None else self.all_classes()
        split = ImageSplit(torch.zeros(len(images), dtype=torch.long), [f"input[{i}]" for i in range(len(images))],
                           array=stack_images(list(images)))
        return self.logits(split, list(range(len(images))), classes).softmax(-1)

    def logits(self, split: ImageSplit, indices: list[int], classes: list[int], batch_size: int = 128) -> torch.Tensor:
        tt = self.meta["test_time"]
        bb: ClipBackbone = self.backbone
        assert self.prompt is not None
        start = {k: v.clone() for k, v in self.prompt.state_dict().items()}
        ids, mask = bb.class_token_ids([f"{self.task.classes[c]}." for c in classes], self.shape.n_ctx)
        keep = max(1, int(round(tt["views"] * tt["select"])))
        out = []
        for i in indices:
            gen = torch.Generator().manual_seed(int(tt["seed"]) * 1_000_003 + int(i))
            image = split.images([i])[0]
            views = torch.cat([image.unsqueeze(0), _augment(image, tt["views"] - 1, gen)])
            feats = bb.image_features(views).to(bb.device)
            self.prompt.load_state_dict(start)
            self.prompt.ctx.requires_grad_(True)
            opt = torch.optim.AdamW([self.prompt.ctx], lr=tt["lr"], weight_decay=0.0)
            for _ in range(tt["steps"]):
                logits = cosine_logits(feats, self.prompt.class_text_features(bb, ids, mask), bb.logit_scale)
                confident = _entropy(logits.detach()).argsort()[:keep]
                avg = logits[confident].log_softmax(-1).exp().mean(0)
                loss = -(avg * avg.clamp_min(1e-12).log()).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                txt = self.prompt.class_text_features(bb, ids, mask)
                out.append(cosine_logits(feats[:1], txt, bb.logit_scale).cpu())
        self.prompt.load_state_dict(start)
        self.prompt.requires_grad_(False)
        return torch.cat(out) if out else torch.zeros(0, len(classes))

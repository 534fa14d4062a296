"""Frozen CLIP-style dual encoders: an image tower and a text tower meeting in one embedding space.

One interface over two transformers classes:
- `CLIPModel` (hub id or local directory): causal text transformer pooled at the end-of-text token;
- `VisionTextDualEncoderModel` (any ViT + any BERT-style text encoder, as LiT builds them): the text
  is pooled by mean over its tokens when the config says `prompttune_text_pooling: "mean"` (sentence
  encoders such as MiniLM), else at the first token.

We run the towers layer by layer ourselves (calling the model's own embedding, layer and norm
modules), so a prompt can enter anywhere: context vectors in place of token embeddings (CoOp), and
per-layer replacement tokens in either tower (deep / multimodal prompts: MaPLe, PromptSRC).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ModelError
from .loading import resolve_device, resolve_dtype, weight_fingerprint

# CLIP's (OpenAI) pixel statistics: the default when a model directory has no preprocessor config.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _layers(tower) -> torch.nn.ModuleList:
    if hasattr(tower, "layers"):  # ViTModel keeps its layers itself
        return tower.layers
    enc = tower.encoder
    return enc.layers if hasattr(enc, "layers") else enc.layer


def _run_layer(layer, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    out = layer(hidden, mask)
    return out[0] if isinstance(out, tuple) else out


def _replace(hidden: torch.Tensor, start: int, tokens: torch.Tensor) -> torch.Tensor:
    """`hidden` with positions start..start+n replaced by `tokens` ((n, d) shared or (batch, n, d))."""
    n = tokens.shape[-2]
    if tokens.dim() == 2:
        tokens = tokens.unsqueeze(0).expand(hidden.shape[0], -1, -1)
    return torch.cat([hidden[:, :start], tokens.to(hidden.dtype), hidden[:, start + n:]], dim=1)


class ClipBackbone:
    """A frozen dual encoder. `encode_images` and `encode_text` return unnormalised projected features."""

    kind = "clip"

    def __init__(self, model, tokenizer, model_id: str, device: torch.device, dtype: torch.dtype,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.fingerprint = weight_fingerprint(model)
        cfg = model.config
        self.text_arch = "clip" if cfg.model_type == "clip" else "bert"
        self.vision_arch = "clip" if cfg.model_type == "clip" else "vit"
        self.text_pooling = "eot" if self.text_arch == "clip" else getattr(cfg, "prompttune_text_pooling", "first")
        self.image_size = int(cfg.vision_config.image_size)
        self.num_channels = int(getattr(cfg.vision_config, "num_channels", 3))
        self.max_text_tokens = int(getattr(cfg.text_config, "max_position_embeddings", 77))
        # a leading special token (CLIP's <|startoftext|>, BERT's [CLS]) stays first; context goes after it
        probe = tokenizer("a")["input_ids"]
        self.context_start = 1 if probe and probe[0] in tokenizer.all_special_ids else 0

    # ----------------------------------------------------------------- sizes
    @property
    def text_hidden(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    @property
    def vision_hidden(self) -> int:
        return int(self.model.config.vision_config.hidden_size)

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def text_depth(self) -> int:
        return len(_layers(self.model.text_model))

    @property
    def vision_depth(self) -> int:
        return len(_layers(self.model.vision_model))

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().clamp(max=100.0))

    # ----------------------------------------------------------------- text
    def token_embedding(self) -> torch.nn.Embedding:
        emb = self.model.text_model.embeddings
        return emb.token_embedding if hasattr(emb, "token_embedding") else emb.word_embeddings

    def class_token_ids(self, texts: Sequence[str], n_context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids of each text with `n_context` placeholder slots after the leading special token, padded.

        Returns (ids, attention mask), both (len(texts), length); slots are at
        `context_start : context_start + n_context` in every row.
        """
        rows = []
        for text in texts:
            ids = self.tokenizer(text)["input_ids"]
            s = self.context_start
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            ids = ids[:s] + [pad] * n_context + ids[s:]
            if len(ids) > self.max_text_tokens:
                raise ModelError(f"text '{text}' with {n_context} context tokens is {len(ids)} tokens, more than "
                                 f"the text tower's {self.max_text_tokens}")
            rows.append(ids)
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        return ids.to(self.device), mask.to(self.device)

    def encode_text(self, embeds: torch.Tensor, mask: torch.Tensor,
                    deep: Sequence[torch.Tensor] | None = None, deep_start: int | None = None) -> torch.Tensor:
        """Projected text features from token embeddings (batch, length, hidden), before position embeddings.

        `deep[i]` ((n, hidden), or (batch, n, hidden)) replaces positions deep_start..deep_start+n at the
        input of layer i+1 (MaPLe / PromptSRC deep text prompts; layer 0's come in through `embeds`).
        """
        tm = self.model.text_model
        embeds = embeds.to(self.dtype)
        if self.text_arch == "clip":
            hidden = tm.embeddings(inputs_embeds=embeds)
        else:
            hidden = tm.embeddings(inputs_embeds=embeds, token_type_ids=torch.zeros_like(mask))
        b, length = mask.shape
        neg = torch.finfo(hidden.dtype).min
        keep = mask.bool()[:, None, None, :].expand(b, 1, length, length)
        if self.text_arch == "clip":
            causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
            keep = keep & causal
        attn = torch.zeros(b, 1, length, length, dtype=hidden.dtype, device=hidden.device).masked_fill(~keep, neg)
        start = self.context_start if deep_start is None else deep_start
        for i, layer in enumerate(_layers(tm)):
            if deep is not None and 1 <= i <= len(deep):
                hidden = _replace(hidden, start, deep[i - 1])
            hidden = _run_layer(layer, hidden, attn)
        if self.text_arch == "clip":
            hidden = tm.final_layer_norm(hidden)
            last = mask.sum(dim=1) - 1
            pooled = hidden[torch.arange(b, device=hidden.device), last]
        elif self.text_pooling == "mean":
            m = mask.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        else:
            pooled = hidden[:, 0]
        return self.model.text_projection(pooled)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Projected features of plain texts (hand-written prompts), without gradients."""
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                ids, mask = self.class_token_ids(texts[i:i + batch_size], 0)
                out.append(self.encode_text(self.token_embedding()(ids), mask).float())
        return torch.cat(out)

    # ----------------------------------------------------------------- images
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (batch, height, width, 3) -> normalised pixels (batch, channels, size, size)."""
        x = images.to(self.device).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True).clamp(0, 1)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        if self.num_channels == 1:
            x = x.mean(dim=1, keepdim=True)
        return x.to(self.dtype)

    def encode_images(self, pixels: torch.Tensor, deep: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Projected image features. `deep[0]` ((n, hidden)) is appended to the patch tokens; `deep[i]`
        replaces them at the input of layer i (VPT-deep / MaPLe / PromptSRC vision prompts)."""
        vm = self.model.vision_model
        hidden = vm.embeddings(pixels.to(self.dtype))
        n_patch = hidden.shape[1]
        if deep:
            hidden = torch.cat([hidden, deep[0].to(hidden.dtype).expand(hidden.shape[0], -1, -1)], dim=1)
        if self.vision_arch == "clip":
            hidden = vm.pre_layrnorm(hidden)
        for i, layer in enumerate(_layers(vm)):
            if deep is not None and 1 <= i < len(deep):
                hidden = _replace(hidden, n_patch, deep[i])
            hidden = _run_layer(layer, hidden, None)
        if self.vision_arch == "clip":
            pooled = vm.post_layernorm(hidden[:, 0])
        else:
            pooled = vm.layernorm(hidden)[:, 0]
        return self.model.visual_projection(pooled)

    def image_features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Frozen projected features of uint8 images (no prompt), fp32 on the CPU."""
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                out.append(self.encode_images(self.preprocess(images[i:i + batch_size])).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)


def load_clip_backbone(source: str, device: str = "auto", dtype: str = "auto") -> ClipBackbone:
    """A `CLIPModel` or `VisionTextDualEncoderModel` from a local directory or a hub id, or an open_clip
    model (`open_clip:...`, see models/open_clip.py), frozen."""
    from transformers import AutoConfig, AutoTokenizer, CLIPModel, VisionTextDualEncoderModel

    from .loading import ALIASES
    from .open_clip import is_open_clip_source, open_clip_to_hf

    if is_open_clip_source(source):  # converted once into a cached CLIPModel directory; artifacts keep the name
        backbone = load_clip_backbone(str(open_clip_to_hf(source)), device, dtype)
        backbone.model_id = source
        return backbone
    if source in ALIASES:
        raise ModelError(f"model '{source}' is a text model ({ALIASES[source].description}); the CLIP methods need a "
                         "CLIP-style dual encoder: a CLIPModel or VisionTextDualEncoderModel directory or hub id")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    path = Path(source).expanduser()
    local = path.exists()
    if local and not (path / "config.json").exists():
        raise ModelError(f"model '{source}': directory has no config.json, so it is not a transformers model")
    where = str(path) if local else source
    try:
        cfg = AutoConfig.from_pretrained(where)
    except OSError as exc:
        raise ModelError(f"model '{source}': cannot load its config ({str(exc).splitlines()[0]})") from None
    classes = {"clip": CLIPModel, "vision-text-dual-encoder": VisionTextDualEncoderModel}
    if cfg.model_type not in classes:
        raise ModelError(f"model '{source}' is a '{cfg.model_type}', not a CLIP-style dual encoder "
                         f"(supported: {', '.join(classes)})")
    model = classes[cfg.model_type].from_pretrained(where, dtype=dt).to(dev).eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(where)
    mean, std = CLIP_MEAN, CLIP_STD
    pre = path / "preprocessor_config.json"
    if local and pre.exists():
        conf = json.loads(pre.read_text(encoding="utf-8"))
        mean, std = conf.get("image_mean", mean), conf.get("image_std", std)
    model_id = str(path.resolve()) if local else source
    return ClipBackbone(model, tokenizer, model_id, dev, dt, mean, std)


def cosine_logits(image_features: torch.Tensor, text_features: torch.Tensor, scale: float) -> torch.Tensor:
    """CLIP's classifier: scaled cosine similarity, (images, classes) or (images, classes) per-image text."""
    img = F.normalize(image_features.float(), dim=-1)
    txt = F.normalize(text_features.float(), dim=-1)
    if txt.dim() == 3:  # one set of class features per image (CoCoOp)
        return scale * torch.einsum("bd,bcd->bc", img, txt)
    return scale * img @ txt.T


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 or math.isnan(a) or math.isnan(b) else 2 * a * b / (a + b)

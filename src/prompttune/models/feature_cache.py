"""A content-addressed cache of frozen image features, on disk.

The image tower of CoOp, KgCoOp, ProGrad, CoCoOp and zero-shot CLIP never changes, yet the paper
code (Dassl) runs it on every image at every epoch. We run it once per (backbone, preprocessing,
image bytes) and keep the features as safetensors under `<cache>/features/`; the key hashes the
images' content, so renamed or moved files still hit, and an edited image misses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from safetensors.torch import load_file

from ..tasks.images import ImageSplit
from ..utils.env import cache_dir
from ..utils.io import atomic_save_tensors
from .clip import ClipBackbone

_MEMORY: dict[str, torch.Tensor] = {}


def feature_key(backbone: ClipBackbone, split: ImageSplit, indices: Sequence[int]) -> str:
    h = hashlib.sha256()
    h.update(f"{backbone.fingerprint}:{backbone.image_size}:{backbone.mean.tolist()}:{backbone.std.tolist()}".encode())
    h.update(split.content_hash(indices).encode())
    return h.hexdigest()[:32]


def cached_image_features(backbone: ClipBackbone, split: ImageSplit, indices: Sequence[int],
                          batch_size: int = 256) -> torch.Tensor:
    """Features (len(indices), dim) of `split`'s images, from memory, the disk cache, or computed once."""
    indices = list(indices)
    key = feature_key(backbone, split, indices)
    if key in _MEMORY:
        return _MEMORY[key]
    path = cache_dir() / "features" / f"{key}.safetensors"
    feats = None
    if path.exists():
        try:
            feats = load_file(str(path))["features"]
        except Exception:  # a damaged cache entry is recomputed, never trusted
            feats = None
    if feats is None or feats.shape[0] != len(indices):
        chunks = []
        for i in range(0, len(indices), batch_size):
            chunks.append(backbone.image_features(split.images(indices[i:i + batch_size]), batch_size))
        feats = torch.cat(chunks) if chunks else torch.zeros(0, backbone.embed_dim)
        atomic_save_tensors(path, {"features": feats}, {"model": backbone.model_id})
    _MEMORY[key] = feats
    return feats


def clear_memory() -> None:
    """Forget the in-process copies (the disk cache stays); benchmarks use it to time cold starts."""
    _MEMORY.clear()

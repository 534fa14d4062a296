"""Frozen encoder backbones (BERT-style `AutoModel`s such as MiniLM): the P-tuning v2 NLU setting.

An encoder scores a class without a language-model head: the input's mean-pooled, L2-normalised
last hidden state goes through a linear head. With no learned head, the head is made of the
normalised embeddings of the verbalizer words, so zero-shot is "the nearest label by cosine"; a
learned head (`fine-tune-head`) starts exactly there. Deep prompts enter as per-layer keys/values
through the transformers cache, masked in for every token of the input (attention is bidirectional).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from ..errors import ModelError
from .attention import cache_kwarg
from .loading import weight_fingerprint
from .scoring import LabelWords, tokenize_label_words

# Cosine similarities live in [-1, 1]; scaled like this they make a usable softmax (the scale
# sentence-transformers uses for its contrastive loss).
LABEL_SCALE = 20.0


@dataclass
class EncoderPrompt:
    """What an encoder scores with: an optional deep prompt and an optional linear head."""

    prefix: Sequence[tuple[torch.Tensor, torch.Tensor]] | None  # per layer, (heads, n_tokens, head_dim)
    head_weight: torch.Tensor | None  # (classes, hidden)
    head_bias: torch.Tensor | None  # (classes,)


class EncoderBackbone:
    """A frozen `AutoModel` encoder with its tokenizer; `score` is the protocol methods use."""

    kind = "encoder"

    def __init__(self, model, tokenizer, model_id: str, device: torch.device, dtype: torch.dtype):
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.fingerprint = weight_fingerprint(model)
        limit = getattr(model.config, "max_position_embeddings", 512)
        self.max_input_tokens = min(512, limit)
        self._label_cache: dict[LabelWords, torch.Tensor] = {}

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def kv_shape(self) -> tuple[int, int, int]:
        cfg = self.model.config
        return cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with [CLS]/[SEP]; over-long inputs keep their start and the final [SEP]."""
        ids = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        limit = self.max_input_tokens
        return [x if len(x) <= limit else x[: limit - 1] + x[-1:] for x in ids]

    def label_words(self, words_per_class: Sequence[Sequence[str]], names: Sequence[str] | None = None) -> LabelWords:
        return tokenize_label_words(self.tokenizer, words_per_class, names)

    def features(self, token_ids: Sequence[Sequence[int]], prefix=None) -> torch.Tensor:
        """Mean-pooled, L2-normalised last hidden states (batch, hidden), float32; differentiable
        w.r.t. the deep prompt `prefix`."""
        batch, longest = len(token_ids), max(len(x) for x in token_ids)
        ids = torch.full((batch, longest), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros(batch, longest, dtype=torch.long)
        for i, x in enumerate(token_ids):
            ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[i, : len(x)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        kwargs = {}
        if prefix is not None:
            layers = self.model.config.num_hidden_layers
            if len(prefix) != layers:
                raise ModelError(f"deep prompt has {len(prefix)} layers, the encoder {layers}")
            data = [(k.to(self.device, self.dtype)[None].expand(batch, -1, -1, -1),
                     v.to(self.device, self.dtype)[None].expand(batch, -1, -1, -1)) for k, v in prefix]
            n_prefix = data[0][0].shape[2]
            kwargs[cache_kwarg(self.model)] = DynamicCache(ddp_cache_data=data, config=self.model.config)
            kwargs["position_ids"] = torch.arange(longest, device=self.device)[None].expand(batch, -1)
            attn = torch.cat([torch.ones(batch, n_prefix, dtype=torch.long, device=self.device), mask], 1)
        else:
            attn = mask
        hidden = self.model(input_ids=ids, attention_mask=attn, token_type_ids=torch.zeros_like(ids),
                            **kwargs).last_hidden_state
        weights = mask[..., None].to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1)
        return F.normalize(pooled.float(), dim=-1)

    @torch.no_grad()
    def label_embeddings(self, labels: LabelWords) -> torch.Tensor:
        """(classes, hidden): each class's words encoded as sentences, averaged and normalised."""
        if labels not in self._label_cache:
            rows = []
            for words in labels.words:
                texts = [self.tokenizer.decode(list(w)).strip() for w in words]
                vecs = self.features(self.tokenize(texts))
                rows.append(F.normalize(vecs.mean(0), dim=-1))
            self._label_cache[labels] = torch.stack(rows)
        return self._label_cache[labels]

    def score(self, token_ids: Sequence[Sequence[int]], labels: LabelWords, prompt: EncoderPrompt | None = None,
              max_row_tokens: int = 1024) -> torch.Tensor:
        """Class scores (batch, classes), float32: the head applied to the pooled features."""
        del max_row_tokens  # an encoder batch is padded, not packed
        if len(token_ids) == 0:
            return torch.zeros(0, labels.num_classes)
        if prompt is not None and not isinstance(prompt, EncoderPrompt):
            raise ModelError(f"an encoder backbone takes an encoder prompt (deep prompt + head), not {type(prompt)}")
        feats = self.features(token_ids, prompt.prefix if prompt else None)
        if prompt is None or prompt.head_weight is None:
            return LABEL_SCALE * feats @ self.label_embeddings(labels).T
        scores = feats @ prompt.head_weight.to(feats.device).T
        return scores + prompt.head_bias.to(feats.device) if prompt.head_bias is not None else scores

    def generate(self, texts, prompt=None, max_new_tokens: int = 32, **kwargs) -> list[str]:
        raise ModelError(f"'{self.model_id}' is an encoder: it classifies, it does not generate text")


def is_encoder_config(config) -> bool:
    """True for configs of encoder-only models (no causal-LM architecture)."""
    archs = getattr(config, "architectures", None) or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs)
    return not causal and not getattr(config, "is_decoder", False) and not getattr(config, "is_encoder_decoder", False)


def load_encoder(source: str, model_id: str, device: torch.device, dtype: torch.dtype) -> EncoderBackbone:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source, dtype=dtype, attn_implementation="sdpa")
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return EncoderBackbone(model, tokenizer, model_id, device, dtype)

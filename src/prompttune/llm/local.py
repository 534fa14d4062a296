"""An in-process transformers chat model as the LLM (default: SmolLM2-135M-Instruct, offline).

Sampling is seeded from the request, so the same request gives the same answer with or without
the cache, and one lock keeps the model to one request at a time.
"""

from __future__ import annotations

import threading

import torch

from .base import ChatRequest, Completion, LLMError


class LocalChatBackend:
    max_concurrency = 1

    def __init__(self, model: str = "smollm2-135m", backbone=None, device: str = "auto"):
        if backbone is None:
            from ..models import load_backbone

            backbone = load_backbone(model, device=device)
        if getattr(backbone, "kind", "") != "causal-lm":
            raise LLMError(f"LLM '{model}' is not a causal language model, it cannot chat")
        self.backbone = backbone
        self.tokenizer = backbone.tokenizer
        if not getattr(self.tokenizer, "chat_template", None):
            raise LLMError(f"LLM '{model}' has no chat template; use an instruct/chat model")
        self.backend_id = f"local:{backbone.model_id}:{backbone.fingerprint}"
        self._lock = threading.Lock()

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)

    @torch.no_grad()
    def chat(self, request: ChatRequest) -> Completion:
        ids = self.prompt_ids(request.message_dicts())
        model, device = self.backbone.model, self.backbone.device
        sample = request.temperature > 0
        kwargs = {"do_sample": sample, "num_return_sequences": request.n}
        if sample:
            kwargs.update(temperature=request.temperature, top_p=0.95, top_k=0)
        with self._lock, torch.random.fork_rng(devices=[]):
            torch.manual_seed(request.seed)
            out = model.generate(
                torch.tensor([ids], device=device), attention_mask=torch.ones(1, len(ids), dtype=torch.long,
                                                                            device=device),
                max_new_tokens=request.max_tokens, pad_token_id=self.tokenizer.pad_token_id, **kwargs,
            )
        new = out[:, len(ids):]
        eos = self.tokenizer.eos_token_id
        n_tokens = int(sum(int((row != eos).sum()) for row in new))
        texts = [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return Completion(texts=texts, prompt_tokens=len(ids), completion_tokens=n_tokens)

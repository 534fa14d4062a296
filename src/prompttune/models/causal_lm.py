"""A frozen causal LM that scores label words and places soft prompts.

Two ways to run a batch, both exact:

* `score` (the fast path, used for training and evaluation). The prompt comes first in every
  sequence, so its keys/values are the same for all examples: on the CPU we compute them once
  (batch 1) and let every example attend to them (`share_prompt_prefix`; on a GPU, where small
  batches are launch-bound, the prompt is placed inline before each example instead). The
  examples themselves are packed back to back into a few rows with a block-diagonal causal mask,
  so no compute goes to padding. Multi-token label words are extra "branch" segments that attend
  to their example's tokens, so each example is encoded once whatever the number of words. Only
  the answer positions are multiplied with the output embedding, and only with the label rows
  unless a multi-token word needs the full softmax there.
  `target_nll` / `target_logprobs` (`targets.py`, generative tasks' loss) run the same packed pass
  (`_packed_hidden`), a target's tokens being its example's branch.
* `padded_inputs` / `generate` (the general path): a left- or right-padded batch through
  `inputs_embeds`, the prompt placed right after the pads with matching attention mask and
  position ids. This is what `generate` (with its KV cache, `batch_size` texts at a time, stop
  strings) runs, and what `score` and `target_nll` fall back to for a model whose attention a
  hand-built packed mask cannot describe (`attention.AttentionPlan`).

Inputs longer than fits (the model's context minus the prompt and the answer) keep their end and
the special tokens the tokenizer adds; the first cut warns once, with a count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

from ..errors import ConfigError, ModelError
from .attention import AttentionPlan, cache_kwarg, move_masks, output_cache
from .context import ContextFitting
from .loading import weight_fingerprint
from .packing import PackedLayout, causal_allowed
from .padded import PaddedPaths
from .scoring import (
    DeltaPrompt,
    LabelWords,
    Prefix,
    PromptInput,
    ResolvedPrompt,
    class_scores,
    one_hot_rows,
    resolve_prompt,
    tokenize_label_words,
)
from .targets import TargetScoring

__all__ = ["CausalLMBackbone", "DeltaPrompt", "LabelWords", "load_causal_lm", "tokenize_label_words"]


class CausalLMBackbone(ContextFitting, PaddedPaths, TargetScoring):
    """A frozen `AutoModelForCausalLM` with its tokenizer.

    The protocol every method relies on: `tokenize`, `embed`, `score` (class scores for a batch,
    optionally behind a soft prompt), `target_nll` (the loss of a text answer) and `generate`.
    """

    kind = "causal-lm"

    def __init__(self, model, tokenizer, model_id: str, device: torch.device, dtype: torch.dtype):
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.decoder = model.base_model
        self.fingerprint = weight_fingerprint(model)
        self.attention = AttentionPlan.of(model)
        self._cache_kw, self._lm_cache_kw = cache_kwarg(self.decoder), cache_kwarg(model)
        self._init_context(model, tokenizer)  # inputs are cut to what fits the context (`fit`)
        # Sharing the prompt's keys/values saves (batch - 1) x prompt-length tokens of compute but
        # costs a second, small pass. That wins where compute dominates (CPUs); on a GPU a small
        # batch is bound by kernel launches, so there the prompt goes inline, in one pass.
        self.share_prompt_prefix = device.type == "cpu"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        softcap = getattr(model.config, "final_logit_softcapping", None)
        self._softcap = float(softcap) if softcap else None

    # ------------------------------------------------------------------ basics
    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[0]

    def tokenize(self, texts: Sequence[str], reserve: int = 0) -> list[list[int]]:
        """Token ids with the model's special tokens; inputs longer than the context minus `reserve`
        (prompt and answer tokens) keep their end (the answer cue), see `fit`."""
        ids = self.tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
        return self.fit(ids, reserve)

    def label_words(self, words_per_class: Sequence[Sequence[str]], names: Sequence[str] | None = None) -> LabelWords:
        return tokenize_label_words(self.tokenizer, words_per_class, names)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings as the model computes them (Gemma scales them, for instance)."""
        return self.model.get_input_embeddings()(ids.to(self.device))

    def _logits(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Output logits for `hidden`, restricted to vocabulary `rows` when given."""
        head = self.model.get_output_embeddings()
        weight = head.weight if rows is None else head.weight[rows]
        logits = hidden.to(weight.dtype) @ weight.T
        if getattr(head, "bias", None) is not None:
            logits = logits + (head.bias if rows is None else head.bias[rows])
        logits = logits.float()
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def _forward(self, cache=None, **kwargs):
        """The decoder's forward, with `cache` under the keyword this transformers version takes."""
        if cache is not None:
            kwargs[self._cache_kw] = cache
        return self.decoder(**kwargs)

    def _prefix_cache(self, prompt: torch.Tensor, rows: int = 1) -> DynamicCache:
        """The keys/values of `prompt` embeddings run alone, every layer keeping all of them (a config-less
        cache: a sliding layer's cache would drop the oldest, which the masks here account for instead)."""
        n = prompt.shape[0]
        kwargs = {}
        if self.attention.packable:
            positions = torch.arange(n)[None]
            masks = self.attention.masks(causal_allowed(torch.ones(1, n, dtype=torch.bool)), positions, positions,
                                         self.dtype)
            kwargs = {"attention_mask": move_masks(masks, self.device), "position_ids": positions.to(self.device)}
        out = self._forward(DynamicCache(), inputs_embeds=prompt.to(self.device, self.dtype)[None], use_cache=True,
                            **kwargs)
        cache = output_cache(out)
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache

    def prefix_from_embeddings(self, prompt: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (keys, values), each (kv_heads, n_tokens, head_dim), that the model computes for
        `prompt` embeddings: the deep prompt that behaves exactly like this soft prompt."""
        self.check_prefix_support()
        cache = self._prefix_cache(prompt)
        return [(layer.keys[0], layer.values[0]) for layer in cache.layers]

    def check_prefix_support(self, method: str = "a deep prompt") -> None:
        """Refuse, before training, a model whose cache cannot hold a key/value prefix (state-space or
        recurrent caches, models without a cache), naming the method and the model."""
        layers = getattr(self.decoder, "layers", None)
        why = None
        if layers is None:
            why = "it has no attention layers to put a prefix in"
        else:
            with torch.no_grad():
                probe = torch.zeros(1, 1, self.hidden_size, device=self.device, dtype=self.dtype)
                out = self.decoder(inputs_embeds=probe, use_cache=True)
            cache = output_cache(out)
            if cache is None:
                fields = getattr(type(out), "__dataclass_fields__", {})
                state = [k for k in ("cache_params", "state") if k in fields and getattr(out, k) is not None]
                why = "it keeps no key/value cache" + (f" (its state is '{state[0]}')" if state else "")
            elif not isinstance(cache, DynamicCache):
                why = f"its cache is a {type(cache).__name__}, not a per-layer key/value cache"
            elif len(cache.layers) != len(layers) or any(getattr(x, "keys", None) is None for x in cache.layers):
                why = "its cache does not keep keys and values for every layer"
        if why:
            raise ConfigError(f"{method} needs a model whose KV cache can take a prefix; model '{self.model_id}' "
                              f"({type(self.model).__name__}) cannot: {why}")

    def _cache_from_prefix(self, prefix: Prefix, rows: int) -> DynamicCache:
        data = [(k.to(self.device, self.dtype)[None], v.to(self.device, self.dtype)[None]) for k, v in prefix]
        if len(data) != len(self.decoder.layers):
            raise ModelError(f"deep prompt has {len(data)} layers, the model {len(self.decoder.layers)}")
        cache = DynamicCache(ddp_cache_data=data)  # no config: sliding layers keep the whole prefix too
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache

    # ------------------------------------------------------------------ fast scoring
    def score(
        self,
        token_ids: Sequence[Sequence[int]],
        labels: LabelWords,
        prompt: PromptInput = None,
        max_row_tokens: int = 1024,
    ) -> torch.Tensor:
        """Class scores (batch, classes), float32, differentiable w.r.t. `prompt`.

        `prompt` is soft-prompt embeddings (n_tokens, hidden), one prompt per example
        (batch, n_tokens, hidden) (instance-dependent prompts, or a server mixing artifacts), or a
        deep prompt: per-layer (keys, values) pairs, each (kv_heads, n_tokens, head_dim), that every
        example attends to.

        With single-token words a score is the word's logit (log-softmax over the classes gives the
        label-restricted distribution); with any multi-token word it is the word's log-probability.
        A class with several words gets the log-sum-exp of its words' scores.
        """
        if len(token_ids) == 0:
            return torch.zeros(0, labels.num_classes)
        resolved = resolve_prompt(self, token_ids, prompt)
        token_ids = self.fit(token_ids, resolved.length + labels.answer_tokens)
        if not self.attention.packable:
            return self._score_unpacked(token_ids, labels, resolved)
        shared = self._shares_prefix(resolved)
        layout = PackedLayout.build(token_ids, labels, max_row_tokens, inline_prompt=0 if shared else resolved.length)
        hidden = self._packed_hidden(layout, resolved, shared)
        answer_hidden = hidden[layout.answer_row, layout.answer_col]  # (B, d)
        flat = labels.flat
        if not labels.needs_full_softmax:
            word_scores = self._logits(answer_hidden, torch.tensor([w[0] for w in flat], device=self.device))
        else:
            word_scores = self._word_logprobs(hidden, answer_hidden, layout, flat)
        return class_scores(word_scores, labels)

    def _shares_prefix(self, prompt: ResolvedPrompt) -> bool:
        """Whether the packed pass runs the prompt once, as a KV prefix every row attends to (a deep prompt
        always; a soft prompt shared by all examples where `share_prompt_prefix`), rather than inline."""
        if prompt.prefix is not None:
            return True
        return prompt.soft is not None and self.share_prompt_prefix and not prompt.per_example

    def _packed_hidden(self, layout: PackedLayout, prompt: ResolvedPrompt, shared: bool) -> torch.Tensor:
        """The decoder's last hidden states (rows, width, hidden) over a packed layout: token embeddings (plus
        DePT's delta on each example's own tokens, never on branches), the prompt in its inline slots or as a
        shared KV prefix (`shared`, the layout then has no slots), block-diagonal masks for every layer type."""
        inline = 0 if shared else prompt.length
        n_prefix = prompt.length if shared else 0
        slots = layout.ids < 0  # inline prompt slots hold -(k+1) for prompt vector k
        embeds = self.embed(layout.ids.clamp(min=0))
        delta = prompt.delta
        if delta is not None:
            index = layout.positions - inline  # each token's place in its own example
            own = (layout.ids >= 0) & (layout.branch == 0) & (layout.unit >= 0) & (index < delta.shape[0])
            update = one_hot_rows(delta.to(self.device, self.dtype), index.clamp(0, delta.shape[0] - 1).to(self.device))
            embeds = embeds + torch.where(own.to(self.device)[..., None], update, torch.zeros_like(update))
        if inline:
            soft = prompt.soft
            slot = (-layout.ids - 1).clamp(min=0)
            if prompt.per_example:  # example i's k-th vector is row i * inline + k of the flattened prompts
                slot = slot + layout.unit.clamp(min=0) * inline
            table = soft.reshape(-1, soft.shape[-1]).to(self.device, self.dtype)
            vectors = one_hot_rows(table, slot.to(self.device))
            embeds = torch.where(slots.to(self.device)[..., None], vectors, embeds)
        positions = layout.positions + n_prefix
        keys = torch.cat([torch.arange(n_prefix).expand(len(positions), -1), positions], 1)
        masks = self.attention.masks(layout.allowed(n_prefix), positions, keys, self.dtype)
        rows = layout.ids.shape[0]
        cache = None
        if shared:
            cache = self._cache_from_prefix(prompt.prefix, rows) if prompt.prefix is not None \
                else self._prefix_cache(prompt.soft, rows)
        return self._forward(
            cache, inputs_embeds=embeds, attention_mask=move_masks(masks, self.device),
            position_ids=positions.to(self.device), use_cache=False,
        ).last_hidden_state

    def _word_logprobs(self, hidden, answer_hidden, layout: PackedLayout, flat) -> torch.Tensor:
        answer_lp = torch.log_softmax(self._logits(answer_hidden), dim=-1)  # (B, V)
        batch = answer_hidden.shape[0]
        cols = []
        for w_idx, word in enumerate(flat):
            score = answer_lp[:, word[0]]
            if len(word) > 1:
                rows, starts = layout.branch_row[w_idx], layout.branch_col[w_idx]  # (B,), (B,)
                offsets = torch.arange(len(word) - 1)
                h = hidden[rows[:, None], starts[:, None] + offsets[None, :]]  # (B, m-1, d)
                lp = torch.log_softmax(self._logits(h), dim=-1)
                nxt = torch.tensor(word[1:], device=lp.device)
                score = score + lp.gather(-1, nxt.expand(batch, -1)[..., None]).squeeze(-1).sum(-1)
            cols.append(score)
        return torch.stack(cols, dim=1)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self, texts: Sequence[str], prompt: PromptInput = None, max_new_tokens: int = 32,
        stop: Sequence[str] | None = None, batch_size: int = 32, lengths: list[int] | None = None, **kwargs,
    ) -> list[str]:
        """Continue each text with the prompt in place (left padding, KV cache), greedy by default
        (`do_sample`, `temperature` and HF's `stopping_criteria` pass through).

        Texts run `batch_size` at a time, sorted by length so that little goes to padding, and come back
        in input order. Each output is cut just before the first occurrence of any `stop` string, and a
        row stops generating once it has written one. Greedy outputs equal one text at a time.
        `lengths`, when given (a list), receives each text's generated token count: the decoding steps it
        took, up to the token that completed a stop string or the end-of-sequence token (what a search
        charges; the output text re-tokenized may count fewer).
        """
        if not texts:
            return []
        if batch_size < 1:
            raise ConfigError(f"generate: batch_size must be at least 1, not {batch_size}")
        stops = _check_stops(stop)
        ids = self.tokenize(texts)
        resolved = resolve_prompt(self, ids, prompt)
        ids = self.fit(ids, resolved.length + max_new_tokens)
        user = kwargs.pop("stopping_criteria", None)
        criteria = StoppingCriteriaList([user] if isinstance(user, StoppingCriteria) else list(user or []))
        if stops:
            criteria.append(StopStrings(self.tokenizer, stops))
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = [""] * len(ids)
        steps = [0] * len(ids)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            part = resolved.select(chunk)
            run = self._generate_with_prefix if part.prefix is not None else self._generate_embedded
            tokens = run([ids[i] for i in chunk], part, max_new_tokens, criteria or None, **kwargs)
            texts_out = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
            for i, row, text in zip(chunk, tokens.tolist(), texts_out, strict=True):
                out[i] = cut_at_stop(text, stops)
                if lengths is not None:
                    steps[i] = self._steps_taken(row, stops if out[i] != text else [])
        if lengths is not None:
            lengths[:] = steps
        return out

    def _steps_taken(self, row: list[int], stops: Sequence[str]) -> int:
        """Decoding steps one generated row took: through its first end-of-sequence token or the token that
        completed a stop string (`stops`: those its text contains), else all of them."""
        eos = self.tokenizer.eos_token_id
        for k in range(1, len(row) + 1):
            if row[k - 1] == eos or (stops and any(s in self.tokenizer.decode(row[:k], skip_special_tokens=True)
                                                   for s in stops)):
                return k
        return len(row)

    def _generate_embedded(
        self, ids: list[list[int]], prompt: ResolvedPrompt, max_new_tokens: int, stopping_criteria, **kwargs
    ) -> torch.Tensor:
        """HF `generate` on a left-padded batch of input embeddings with the prompt right after the pads:
        the new tokens (batch, steps), finished rows padded."""
        embeds, mask, _, _ = self.padded_inputs(ids, prompt.embedding_input(), padding_side="left")
        kwargs.setdefault("do_sample", False)
        return self.model.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id, stopping_criteria=stopping_criteria, **kwargs,
        )

    def _generate_with_prefix(
        self, ids: list[list[int]], prompt: ResolvedPrompt, max_new_tokens: int, stopping_criteria=None,
        do_sample: bool = False, temperature: float = 1.0, **unsupported,
    ) -> torch.Tensor:
        """Greedy or sampled decoding behind a deep prompt's keys/values; `stopping_criteria` (HF's, called
        with the tokens generated so far) may end a row between two steps. The new tokens (batch, steps).

        HF `generate` assumes every cached position has an input id, which a learned prefix has not,
        so this small loop runs the cache itself: prefill after the prefix, then one token a step.
        """
        if unsupported:
            raise ModelError(f"generation behind a deep prompt supports do_sample and temperature, not "
                             f"{', '.join(unsupported)}")
        n_prefix = prompt.length
        batch, longest = len(ids), max(map(len, ids))
        input_ids = torch.full((batch, longest), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(batch, longest, dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, longest - len(x):] = torch.tensor(x)
            mask[i, longest - len(x):] = 1
        cache = self._cache_from_prefix(prompt.prefix, batch)
        full_mask = torch.cat([torch.ones(batch, n_prefix, dtype=torch.long), mask], 1).to(self.device)
        positions = (n_prefix + (mask.cumsum(1) - 1).clamp(min=0)).to(self.device)
        step_ids = input_ids.to(self.device)
        out_tokens: list[torch.Tensor] = []
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        eos = self.tokenizer.eos_token_id
        for _ in range(max_new_tokens):
            out = self.model(input_ids=step_ids, attention_mask=full_mask, position_ids=positions,
                             use_cache=True, **{self._lm_cache_kw: cache})
            cache = output_cache(out)
            logits = out.logits[:, -1].float()
            if do_sample:
                nxt = torch.multinomial(torch.softmax(logits / max(temperature, 1e-5), -1), 1)[:, 0]
            else:
                nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.tokenizer.pad_token_id), nxt)
            out_tokens.append(nxt)
            done |= nxt == eos
            if stopping_criteria is not None:
                done |= stopping_criteria(torch.stack(out_tokens, 1), None).to(done.device)
            if done.all():
                break
            step_ids = nxt[:, None]
            full_mask = torch.cat([full_mask, torch.ones(batch, 1, dtype=torch.long, device=self.device)], 1)
            positions = positions[:, -1:] + 1
        return torch.stack(out_tokens, 1).cpu()


class StopStrings(StoppingCriteria):
    """Stops a row once the text it has generated contains a stop string, anywhere (a token may carry
    text past the stop string, which HF's end-anchored `StopStringCriteria` would not stop on)."""

    def __init__(self, tokenizer, stops: Sequence[str]):
        self.tokenizer, self.stops = tokenizer, list(stops)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        hit = [any(s in t for s in self.stops) for t in texts]
        return torch.tensor(hit, dtype=torch.bool, device=input_ids.device)


def _check_stops(stop: Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
        raise ConfigError(f"generate: stop must be a list of non-empty strings, not {stop!r}")
    return list(stop)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the first occurrence of any of `stops`."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(found)] if found else text


def load_causal_lm(source: str, model_id: str, device: torch.device, dtype: torch.dtype) -> CausalLMBackbone:
    """A frozen `AutoModelForCausalLM` from `source` (what `resolve_model_source` gives), with SDPA
    attention where the architecture has it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    try:
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="sdpa")
    except ValueError as exc:  # an architecture without SDPA attention (or without attention)
        if "scaled_dot_product_attention" not in str(exc):
            raise
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    lm.to(device).eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    return CausalLMBackbone(lm, tokenizer, model_id, device, dtype)

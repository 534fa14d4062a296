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
* `padded_inputs` / `generate` (the general path): a left- or right-padded batch through
  `inputs_embeds`, the prompt placed right after the pads with matching attention mask and
  position ids. This is what `generate` (with its KV cache) runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from ..errors import ConfigError, ModelError
from .loading import resolve_device, resolve_dtype, resolve_model_source, weight_fingerprint


@dataclass(frozen=True)
class LabelWords:
    """Token ids of every verbalizer word, grouped by class (class -> words -> token ids)."""

    words: tuple[tuple[tuple[int, ...], ...], ...]

    @property
    def needs_full_softmax(self) -> bool:
        """Multi-token words need real log-probabilities, so that words of different length compare."""
        return any(len(w) > 1 for cls in self.words for w in cls)

    @property
    def flat(self) -> list[tuple[int, ...]]:
        return [w for cls in self.words for w in cls]

    @property
    def num_classes(self) -> int:
        return len(self.words)


@dataclass
class DeltaPrompt:
    """A soft prompt plus an additive update of the input tokens' embeddings by position (DePT):
    the k-th token of every example gets `input_delta[k]` added, for k < len(input_delta)."""

    embeddings: torch.Tensor  # (n_tokens, hidden)
    input_delta: torch.Tensor  # (max_positions, hidden)


def tokenize_label_words(tokenizer, words_per_class: Sequence[Sequence[str]],
                         names: Sequence[str] | None = None) -> LabelWords:
    """Token ids of every verbalizer word (no special tokens); a word that tokenizes to nothing is an error."""
    out = []
    for c, words in enumerate(words_per_class):
        toks = []
        for w in words:
            ids = tuple(tokenizer(w, add_special_tokens=False)["input_ids"])
            if not ids:
                label = names[c] if names else str(c)
                raise ModelError(f"verbalizer word {w!r} for label '{label}' tokenizes to nothing")
            toks.append(ids)
        out.append(tuple(toks))
    return LabelWords(tuple(out))


Prefix = Sequence[tuple[torch.Tensor, torch.Tensor]]
PromptInput = torch.Tensor | DeltaPrompt | Prefix | None


class CausalLMBackbone:
    """A frozen `AutoModelForCausalLM` with its tokenizer.

    The protocol every method relies on: `tokenize`, `embed`, `score` (class scores for a batch,
    optionally behind a soft prompt) and `generate`.
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
        self.max_input_tokens = 512
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

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with the model's special tokens; over-long inputs keep their end (the answer cue)."""
        ids = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        limit = self.max_input_tokens
        return [x if len(x) <= limit else x[:1] + x[len(x) - limit + 1 :] for x in ids]

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

    def _prefix_cache(self, prompt: torch.Tensor, rows: int):
        out = self.decoder(inputs_embeds=prompt.to(self.device, self.dtype)[None], use_cache=True)
        cache = out.past_key_values
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache

    def prefix_from_embeddings(self, prompt: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (keys, values), each (kv_heads, n_tokens, head_dim), that the model computes for
        `prompt` embeddings: the deep prompt that behaves exactly like this soft prompt."""
        self.check_prefix_support()
        cache = self.decoder(inputs_embeds=prompt.to(self.device, self.dtype)[None], use_cache=True).past_key_values
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
            cache = getattr(out, "past_key_values", None)
            if cache is None:
                state = [k for k in ("cache_params", "state") if getattr(out, k, None) is not None]
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
        cache = DynamicCache(ddp_cache_data=data, config=self.model.config)
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
        if hasattr(prompt, "for_inputs"):  # an input-dependent prompt: one prompt per example
            prompt = prompt.for_inputs(self, token_ids)
        delta = None
        if isinstance(prompt, DeltaPrompt):
            prompt, delta = prompt.embeddings, prompt.input_delta
        deep = prompt is not None and not torch.is_tensor(prompt)
        per_example = torch.is_tensor(prompt) and prompt.dim() == 3
        if per_example and prompt.shape[0] != len(token_ids):
            raise ModelError(f"per-example prompts: {prompt.shape[0]} prompts for {len(token_ids)} examples")
        shared = deep or (prompt is not None and self.share_prompt_prefix and not per_example)
        inline = prompt.shape[-2] if prompt is not None and not shared else 0
        layout = _PackedLayout.build(token_ids, labels, max_row_tokens, inline_prompt=inline)
        n_prefix = (prompt[0][0].shape[-2] if deep else prompt.shape[0]) if shared else 0
        slots = layout.ids < 0  # inline prompt slots hold -(k+1) for prompt vector k
        embeds = self.embed(layout.ids.clamp(min=0))
        if delta is not None:
            index = layout.positions - inline  # each token's place in its own example
            own = (layout.ids >= 0) & (layout.branch == 0) & (layout.unit >= 0) & (index < delta.shape[0])
            update = _rows(delta.to(self.device, self.dtype), index.clamp(0, delta.shape[0] - 1).to(self.device))
            embeds = embeds + torch.where(own.to(self.device)[..., None], update, torch.zeros_like(update))
        if inline:
            slot = (-layout.ids - 1).clamp(min=0)
            if per_example:  # example i's k-th vector is row i * inline + k of the flattened prompts
                slot = slot + layout.unit.clamp(min=0) * inline
            table = prompt.reshape(-1, prompt.shape[-1]).to(self.device, self.dtype)
            vectors = _rows(table, slot.to(self.device))
            embeds = torch.where(slots.to(self.device)[..., None], vectors, embeds)
        mask = layout.attention_mask(n_prefix, self.dtype).to(self.device)
        positions = (layout.positions + n_prefix).to(self.device)
        rows = layout.ids.shape[0]
        cache = None
        if shared:
            cache = self._cache_from_prefix(prompt, rows) if deep else self._prefix_cache(prompt, rows)
        hidden = self.decoder(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
            past_key_values=cache, use_cache=False,
        ).last_hidden_state
        answer_hidden = hidden[layout.answer_row, layout.answer_col]  # (B, d)
        flat = labels.flat
        if not labels.needs_full_softmax:
            word_scores = self._logits(answer_hidden, torch.tensor([w[0] for w in flat], device=self.device))
        else:
            word_scores = self._word_logprobs(hidden, answer_hidden, layout, flat)
        return _class_scores(word_scores, labels)

    @torch.inference_mode()
    def answer_hidden_mixed(
        self, token_ids: Sequence[Sequence[int]], prompt_of: Sequence[int], prompts: Sequence[torch.Tensor],
        max_row_tokens: int = 1024,
    ) -> torch.Tensor:
        """The hidden state at each example's answer position (batch, hidden), example i behind soft
        prompt `prompts[prompt_of[i]]` (-1: none), all in one packed forward pass: what a server mixing
        artifacts needs. The distinct prompts' keys/values are computed once (one block-diagonal pass,
        positions restarting per prompt) and every example attends only to its own prompt's segment."""
        single = LabelWords(words=(((0,),),))  # no word branches: only the answer position is read
        layout = _PackedLayout.build(token_ids, single, max_row_tokens)
        lengths = [int(p.shape[0]) for p in prompts]
        total, rows = sum(lengths), layout.ids.shape[0]
        segment = torch.cat([torch.full((n,), j) for j, n in enumerate(lengths)]) if total else torch.zeros(0)
        cache = None
        if total:
            causal = torch.ones(total, total, dtype=torch.bool).tril()
            allowed = (segment[:, None] == segment[None, :]) & causal
            prefix_mask = torch.zeros(total, total, dtype=self.dtype)
            prefix_mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
            positions = torch.cat([torch.arange(n) for n in lengths])
            cache = self.decoder(
                inputs_embeds=torch.cat([p.to(self.device, self.dtype) for p in prompts])[None],
                attention_mask=prefix_mask[None, None].to(self.device), position_ids=positions[None].to(self.device),
                use_cache=True,
            ).past_key_values
            if rows > 1:
                cache.batch_repeat_interleave(rows)
        mask = layout.attention_mask(total, self.dtype)
        owner = torch.tensor(list(prompt_of) + [-1], dtype=torch.long)  # index -1 (pads) -> no prompt
        query_prompt = owner[layout.unit]  # (R, L): the prompt each token belongs behind
        if total:
            sees = query_prompt[:, :, None] == segment[None, None, :].long()
            mask[:, 0, :, :total] = torch.zeros_like(sees, dtype=self.dtype).masked_fill_(
                ~sees, torch.finfo(self.dtype).min)
        shift = torch.tensor(lengths + [0], dtype=torch.long)[query_prompt]
        hidden = self.decoder(
            inputs_embeds=self.embed(layout.ids.clamp(min=0)), attention_mask=mask.to(self.device),
            position_ids=(layout.positions + shift).to(self.device), past_key_values=cache, use_cache=False,
        ).last_hidden_state
        return hidden[layout.answer_row, layout.answer_col]

    def _word_logprobs(self, hidden, answer_hidden, layout: _PackedLayout, flat) -> torch.Tensor:
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

    @torch.no_grad()
    def pooled(self, token_ids: Sequence[Sequence[int]], batch_size: int = 32) -> torch.Tensor:
        """Each input's mean last hidden state without any prompt, (batch, hidden) float32 on the CPU:
        the input representation of instance-dependent prompts."""
        out = []
        for i in range(0, len(token_ids), batch_size):
            chunk = token_ids[i : i + batch_size]
            embeds, mask, positions, _ = self.padded_inputs(chunk, None, padding_side="right")
            hidden = self.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
            weights = mask[..., None].to(hidden.dtype)
            out.append(((hidden * weights).sum(1) / weights.sum(1)).float().cpu())
        return torch.cat(out)

    # ------------------------------------------------------------------ padded path
    def padded_inputs(
        self, token_ids: Sequence[Sequence[int]], prompt: torch.Tensor | DeltaPrompt | None = None,
        padding_side: str = "left",
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs_embeds, attention_mask, position_ids, answer_index) for a padded batch.

        The prompt goes right after the pads (left padding) or first (right padding); the mask is 0
        on pads only, and positions count real tokens, so the prompt always starts at position 0.
        """
        if padding_side not in ("left", "right"):
            raise ValueError("padding_side must be 'left' or 'right'")
        batch, longest = len(token_ids), max(len(x) for x in token_ids)
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((batch, longest), pad_id, dtype=torch.long)
        mask = torch.zeros(batch, longest, dtype=torch.long)
        for i, x in enumerate(token_ids):
            sl = slice(longest - len(x), longest) if padding_side == "left" else slice(0, len(x))
            ids[i, sl] = torch.tensor(x, dtype=torch.long)
            mask[i, sl] = 1
        embeds = self.embed(ids)
        if isinstance(prompt, DeltaPrompt):
            delta, prompt = prompt.input_delta.to(self.device, self.dtype), prompt.embeddings
            index = (mask.cumsum(1) - 1).clamp(min=0)
            own = (mask == 1) & (index < delta.shape[0])
            update = _rows(delta, index.clamp(max=delta.shape[0] - 1).to(self.device))
            embeds = embeds + torch.where(own.to(self.device)[..., None], update, torch.zeros_like(update))
        n_prompt = 0
        if prompt is not None:
            n_prompt = prompt.shape[-2]
            n_pads = (1 - mask).sum(1) if padding_side == "left" else torch.zeros(batch, dtype=torch.long)
            j = torch.arange(longest + n_prompt)[None, :]
            start = n_pads[:, None]
            # Gather from [tokens..., prompt...]: before the prompt slot take token j, inside it the
            # prompt, after it token j - n_prompt.
            index = torch.where(j < start, j, torch.where(j < start + n_prompt, longest + j - start, j - n_prompt))
            rows = prompt if prompt.dim() == 3 else prompt[None].expand(batch, -1, -1)  # per example or shared
            source = torch.cat([embeds, rows.to(self.device, self.dtype)], 1)
            embeds = source.gather(1, index.to(self.device)[..., None].expand(-1, -1, source.shape[-1]))
            mask = torch.cat([mask, torch.ones(batch, n_prompt, dtype=torch.long)], 1).gather(1, index)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        lengths = torch.tensor([len(x) for x in token_ids])
        answer = (
            torch.full((batch,), longest + n_prompt - 1) if padding_side == "left" else lengths + n_prompt - 1
        )
        return embeds, mask.to(self.device), positions.to(self.device), answer.to(self.device)

    def score_padded(
        self, token_ids: Sequence[Sequence[int]], labels: LabelWords, prompt: torch.Tensor | None = None,
        padding_side: str = "left",
    ) -> torch.Tensor:
        """Class scores through a plain padded batch (single-token words); checks `score`'s packing."""
        if labels.needs_full_softmax:
            raise ModelError("score_padded supports single-token label words only; use score()")
        embeds, mask, positions, answer = self.padded_inputs(token_ids, prompt, padding_side)
        hidden = self.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        rows = torch.tensor([w[0] for w in labels.flat], device=self.device)
        word_scores = self._logits(hidden[torch.arange(len(token_ids), device=self.device), answer], rows)
        return _class_scores(word_scores, labels)

    def score_reference(
        self, token_ids: Sequence[Sequence[int]], labels: LabelWords, prompt: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The naive computation: one sequence per (example, word), full-vocabulary logits everywhere.

        Slow on purpose; it is the yardstick `score` is tested and benchmarked against.
        """
        flat = labels.flat
        out = torch.zeros(len(token_ids), len(flat))
        full_softmax = labels.needs_full_softmax
        for i, x in enumerate(token_ids):
            for w_idx, word in enumerate(flat):
                seq = torch.tensor(list(x) + list(word[:-1]), device=self.device)[None]
                embeds = self.embed(seq)
                if prompt is not None:
                    embeds = torch.cat([prompt.to(self.device, self.dtype)[None], embeds], 1)
                logits = self.model(inputs_embeds=embeds).logits[0].float()  # (T, V): every position
                tail = logits[len(logits) - len(word) :]
                if full_softmax:
                    tail = torch.log_softmax(tail, -1)
                    out[i, w_idx] = tail.gather(-1, torch.tensor(word, device=tail.device)[:, None]).sum()
                else:
                    out[i, w_idx] = tail[0, word[0]]
        return _class_scores(out, labels)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self, texts: Sequence[str], prompt: PromptInput = None, max_new_tokens: int = 32, **kwargs
    ) -> list[str]:
        """Continue each text with the prompt in place (left padding, KV cache), greedy by default."""
        if not texts:
            return []
        if prompt is not None and isinstance(prompt, (list, tuple)):
            return self._generate_with_prefix(texts, prompt, max_new_tokens, **kwargs)
        ids = self.tokenize(texts)
        if hasattr(prompt, "for_inputs"):
            prompt = prompt.for_inputs(self, ids)
        embeds, mask, _, _ = self.padded_inputs(ids, prompt, padding_side="left")
        kwargs.setdefault("do_sample", False)
        out = self.model.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id, **kwargs,
        )
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def _generate_with_prefix(
        self, texts: Sequence[str], prefix: Prefix, max_new_tokens: int, do_sample: bool = False,
        temperature: float = 1.0, **unsupported,
    ) -> list[str]:
        """Greedy or sampled decoding behind a deep prompt's keys/values.

        HF `generate` assumes every cached position has an input id, which a learned prefix has not,
        so this small loop runs the cache itself: prefill after the prefix, then one token a step.
        """
        if unsupported:
            raise ModelError(f"generation behind a deep prompt supports do_sample and temperature, not "
                             f"{', '.join(unsupported)}")
        ids = self.tokenize(texts)
        batch, longest = len(ids), max(map(len, ids))
        input_ids = torch.full((batch, longest), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(batch, longest, dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, longest - len(x):] = torch.tensor(x)
            mask[i, longest - len(x):] = 1
        n_prefix = prefix[0][0].shape[-2]
        cache = self._cache_from_prefix(prefix, batch)
        full_mask = torch.cat([torch.ones(batch, n_prefix, dtype=torch.long), mask], 1).to(self.device)
        positions = (n_prefix + (mask.cumsum(1) - 1).clamp(min=0)).to(self.device)
        step_ids = input_ids.to(self.device)
        out_tokens: list[torch.Tensor] = []
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        eos = self.tokenizer.eos_token_id
        for _ in range(max_new_tokens):
            out = self.model(input_ids=step_ids, attention_mask=full_mask, position_ids=positions,
                             past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1].float()
            if do_sample:
                nxt = torch.multinomial(torch.softmax(logits / max(temperature, 1e-5), -1), 1)[:, 0]
            else:
                nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.tokenizer.pad_token_id), nxt)
            out_tokens.append(nxt)
            done |= nxt == eos
            if done.all():
                break
            step_ids = nxt[:, None]
            full_mask = torch.cat([full_mask, torch.ones(batch, 1, dtype=torch.long, device=self.device)], 1)
            positions = positions[:, -1:] + 1
        tokens = torch.stack(out_tokens, 1).cpu().tolist()
        return self.tokenizer.batch_decode(tokens, skip_special_tokens=True)


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`table[index]` through a one-hot matmul: its gradient is a matmul too, so it is deterministic,
    where indexing's scatter-add backward is not (repeated indices, several threads)."""
    return F.one_hot(index, table.shape[0]).to(table.dtype) @ table


def _class_scores(word_scores: torch.Tensor, labels: LabelWords) -> torch.Tensor:
    cols, start = [], 0
    for cls in labels.words:
        chunk = word_scores[:, start : start + len(cls)]
        cols.append(chunk[:, 0] if len(cls) == 1 else torch.logsumexp(chunk, dim=1))
        start += len(cls)
    return torch.stack(cols, dim=1)


@dataclass
class _PackedLayout:
    """Examples (and their multi-token-word branches) packed into rows, with the bookkeeping."""

    ids: torch.Tensor  # (R, L) token ids, pads included
    positions: torch.Tensor  # (R, L) positions before the prompt offset
    unit: torch.Tensor  # (R, L) which example a token belongs to; -1 for pads
    branch: torch.Tensor  # (R, L) 0 for the example's own tokens, k for the k-th word branch
    answer_row: torch.Tensor
    answer_col: torch.Tensor
    branch_row: dict[int, torch.Tensor]
    branch_col: dict[int, torch.Tensor]

    @classmethod
    def build(
        cls, token_ids: Sequence[Sequence[int]], labels: LabelWords, max_row_tokens: int, inline_prompt: int = 0
    ) -> _PackedLayout:
        """`inline_prompt` > 0 puts that many prompt slots (ids -1, -2, ...) before every example."""
        branches = [(w_idx, w[:-1]) for w_idx, w in enumerate(labels.flat) if len(w) > 1]
        rows: list[list[tuple[int, int, int, int]]] = [[]]  # (token, position, unit, branch)
        answer_row, answer_col = [], []
        branch_row = {w: [] for w, _ in branches}
        branch_col = {w: [] for w, _ in branches}
        for i, x in enumerate(token_ids):
            need = inline_prompt + len(x) + sum(len(b) for _, b in branches)
            if rows[-1] and len(rows[-1]) + need > max_row_tokens:
                rows.append([])
            row = rows[-1]
            r = len(rows) - 1
            row.extend((-k - 1, k, i, 0) for k in range(inline_prompt))
            row.extend((t, inline_prompt + p, i, 0) for p, t in enumerate(x))
            answer_row.append(r)
            answer_col.append(len(row) - 1)
            for k, (w_idx, toks) in enumerate(branches, start=1):
                branch_row[w_idx].append(r)
                branch_col[w_idx].append(len(row))
                row.extend((t, inline_prompt + len(x) + p, i, k) for p, t in enumerate(toks))
        width = max(len(r) for r in rows)
        table = torch.zeros(len(rows), width, 4, dtype=torch.long)
        table[..., 2] = -1  # pads belong to no example
        for r, row in enumerate(rows):
            table[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        as_t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
        return cls(
            ids=table[..., 0], positions=table[..., 1], unit=table[..., 2], branch=table[..., 3],
            answer_row=as_t(answer_row), answer_col=as_t(answer_col),
            branch_row={k: as_t(v) for k, v in branch_row.items()},
            branch_col={k: as_t(v) for k, v in branch_col.items()},
        )

    def attention_mask(self, n_prompt: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive (R, 1, L, n_prompt + L) mask: prompt visible to all; causal within an example;
        a word branch sees its example and itself; pads see only themselves (never a NaN row)."""
        n_rows, width = self.ids.shape
        unit_q, unit_k = self.unit[:, :, None], self.unit[:, None, :]
        br_q, br_k = self.branch[:, :, None], self.branch[:, None, :]
        causal = torch.ones(width, width, dtype=torch.bool).tril()[None]
        allowed = (unit_q == unit_k) & (unit_q >= 0) & causal & ((br_k == 0) | (br_k == br_q))
        allowed |= torch.eye(width, dtype=torch.bool)[None]
        prompt_cols = (self.unit >= 0)[:, :, None].expand(n_rows, width, n_prompt)
        allowed = torch.cat([prompt_cols, allowed], dim=2)
        mask = torch.zeros(allowed.shape, dtype=dtype)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask[:, None]


def load_backbone(model: str = "smollm2-135m", device: str = "auto", dtype: str = "auto"):
    """Load a frozen backbone by alias, local directory, GGUF file or hub id: a `CausalLMBackbone`,
    or an `EncoderBackbone` when the config is an encoder's (BERT, MiniLM, ...)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .encoder import is_encoder_config, load_encoder

    if model.startswith("open_clip:"):
        raise ModelError(f"model '{model}' is an open_clip CLIP model; it takes the CLIP methods (zero-shot-clip, "
                         "coop, cocoop, kgcoop, prograd, maple, promptsrc, tpt) and an image task")
    source, model_id = resolve_model_source(model)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    try:
        config = AutoConfig.from_pretrained(source)
        if config.model_type in ("clip", "vision-text-dual-encoder"):
            raise ModelError(f"model '{model}' is a CLIP-style dual encoder ({config.model_type}); it takes the CLIP "
                             "methods (zero-shot-clip, coop, cocoop, kgcoop, prograd, maple, promptsrc, tpt) and an "
                             "image task")
        if is_encoder_config(config):
            return load_encoder(source, model_id, dev, torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
        try:
            lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, attn_implementation="sdpa")
        except ValueError as exc:  # an architecture without SDPA attention (or without attention)
            if "scaled_dot_product_attention" not in str(exc):
                raise
            lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = "from its directory" if Path(source).exists() else "as a hub id"
        raise ModelError(f"cannot load model '{model}' {where} ({first})") from None
    lm.to(dev).eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    return CausalLMBackbone(lm, tokenizer, model_id, dev, torch_dtype)

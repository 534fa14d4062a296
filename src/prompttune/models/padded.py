"""`CausalLMBackbone`'s padded paths: one sequence per row, padding masked by the 2-D mask transformers
turns into each layer's own mask. Slower than packing but exact on any architecture: `score` takes it
(`_score_unpacked`) for a model no packed mask describes, and `prompttune.testing.score_padded` builds on
`padded_inputs` to check the packed path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .scoring import DeltaPrompt, LabelWords, ResolvedPrompt, class_scores, one_hot_rows


class PaddedPaths:
    """A mixin of `CausalLMBackbone`: it uses `embed`, `_logits`, `_forward`, `fit` and `_cache_from_prefix`."""

    def _score_unpacked(self, token_ids: list[list[int]], labels: LabelWords, prompt: ResolvedPrompt) -> torch.Tensor:
        """`score` through right-padded sequences whose masks transformers builds itself: for models a
        hand-built packed mask cannot describe (`AttentionPlan.why_not_packable`). One sequence per
        example, and one per (example, multi-token word) carrying the word's leading tokens."""
        flat, batch = labels.flat, len(token_ids)
        branches = [w_idx for w_idx, w in enumerate(flat) if len(w) > 1]
        tails = [[]] * batch + [list(flat[w_idx][:-1]) for w_idx in branches for _ in token_ids]
        hidden, answer = self._padded_hidden(token_ids, tails, prompt)
        answer = answer[:batch]
        answer_hidden = hidden[torch.arange(batch, device=self.device), answer]
        if not labels.needs_full_softmax:
            word_scores = self._logits(answer_hidden, torch.tensor([w[0] for w in flat], device=self.device))
            return class_scores(word_scores, labels)
        answer_lp = torch.log_softmax(self._logits(answer_hidden), dim=-1)
        cols = []
        for w_idx, word in enumerate(flat):
            score = answer_lp[:, word[0]]
            if len(word) > 1:  # its branch sequences: the tokens after the answer predict the word's rest
                rows = torch.arange(batch, device=self.device) + batch * (1 + branches.index(w_idx))
                offsets = answer[:, None] + 1 + torch.arange(len(word) - 1, device=self.device)[None]
                lp = torch.log_softmax(self._logits(hidden[rows[:, None], offsets]), dim=-1)
                nxt = torch.tensor(word[1:], device=lp.device).expand(batch, -1)
                score = score + lp.gather(-1, nxt[..., None]).squeeze(-1).sum(-1)
            cols.append(score)
        return class_scores(torch.stack(cols, dim=1), labels)

    def _padded_hidden(
        self, token_ids: Sequence[Sequence[int]], tails: Sequence[Sequence[int]], prompt: ResolvedPrompt,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states of right-padded sequences `token_ids[s % batch] + tails[s]` behind the prompt
        (soft prompt first, DePT's delta on the input's own tokens only, a deep prompt as KV prefix), and each
        sequence's index of its input's last token. `len(tails)` is a multiple of the batch: a per-example
        prompt repeats with it."""
        batch = len(token_ids)
        seqs = [list(token_ids[s % batch]) + list(t) for s, t in enumerate(tails)]
        soft = prompt.soft
        if prompt.per_example:
            soft = soft.repeat(len(seqs) // batch, 1, 1)
        n_soft = 0 if soft is None else soft.shape[-2]
        embeds, mask, positions, _ = self.padded_inputs(seqs, soft, padding_side="right")
        own_length = torch.tensor([len(token_ids[s % batch]) for s in range(len(seqs))])
        delta = prompt.delta
        if delta is not None:  # DePT's update goes to the input's own tokens, not to a word's (as when packed)
            index = torch.arange(embeds.shape[1])[None] - n_soft  # right padding: prompt, then the input
            own = (index >= 0) & (index < own_length[:, None]) & (index < delta.shape[0])
            update = one_hot_rows(delta.to(self.device, self.dtype),
                                  index.clamp(0, delta.shape[0] - 1).expand(len(seqs), -1).to(self.device))
            embeds = embeds + torch.where(own.to(self.device)[..., None], update, torch.zeros_like(update))
        cache = None
        if prompt.prefix is not None:  # the prefix's keys sit before every sequence, at positions 0..n-1
            n = prompt.length
            cache = self._cache_from_prefix(prompt.prefix, len(seqs))
            mask = torch.cat([torch.ones(len(seqs), n, dtype=mask.dtype, device=mask.device), mask], 1)
            positions = positions + n
        hidden = self._forward(cache, inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                               use_cache=False).last_hidden_state
        return hidden, (own_length + n_soft - 1).to(self.device)

    @torch.no_grad()
    def pooled(self, token_ids: Sequence[Sequence[int]], batch_size: int = 32) -> torch.Tensor:
        """Each input's mean last hidden state without any prompt, (batch, hidden) float32 on the CPU:
        the input representation of instance-dependent prompts."""
        out = []
        token_ids = self.fit(token_ids)
        for i in range(0, len(token_ids), batch_size):
            chunk = token_ids[i : i + batch_size]
            embeds, mask, positions, _ = self.padded_inputs(chunk, None, padding_side="right")
            hidden = self._forward(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
            weights = mask[..., None].to(hidden.dtype)
            out.append(((hidden * weights).sum(1) / weights.sum(1)).float().cpu())
        return torch.cat(out)

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
            update = one_hot_rows(delta, index.clamp(max=delta.shape[0] - 1).to(self.device))
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

"""Teacher-forced target likelihoods behind a prompt: what generative tasks train and distill on.

`target_nll` is `score`'s counterpart when the answer is text: each example's target tokens follow its
input, and the loss is the summed negative log-likelihood of those tokens. It runs the same packed pass
as `score` (`CausalLMBackbone._packed_hidden`): a target's tokens but its last are one "branch" of its
example (`PackedLayout.for_targets`), so they attend to the input and to each other as in one plain
sequence, and DePT's input delta stays on the input's own tokens, as at generation time, where generated
tokens get none. Only the positions that predict a target token go through the output layer, a chunk at
a time, so the logits held at once are (chunk x vocabulary), never (rows x width x vocabulary); under
autograd each chunk is recomputed in the backward pass instead of being kept.

A model no packed mask describes takes the padded fallback (`PaddedPaths._padded_hidden`, right padding),
with the same result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from ..errors import ModelError
from .packing import PackedLayout
from .scoring import PromptInput, resolve_prompt

# positions whose full-vocabulary log-softmax is computed at once
TARGET_CHUNK = 256


class TargetScoring:
    """A mixin of `CausalLMBackbone`: it uses `fit`, `attention`, `_shares_prefix`, `_packed_hidden`,
    `_padded_hidden` and `_logits`."""

    def target_nll(
        self, token_ids: Sequence[Sequence[int]], target_ids: Sequence[Sequence[int]], prompt: PromptInput = None,
        max_row_tokens: int = 1024,
    ) -> torch.Tensor:
        """(batch,) float32: the summed negative log-likelihood of each example's `target_ids[i]` (non-empty,
        no special tokens) teacher-forced right after its input `token_ids[i]` (the tokenizer's ids, special
        tokens included), behind `prompt` (anything `score` takes; `for_inputs` sees the input ids only).
        Differentiable w.r.t. the prompt."""
        if len(token_ids) == 0:
            return torch.zeros(0)
        hidden, targets, counts = self._target_hidden(token_ids, target_ids, prompt, max_row_tokens)
        chunks = []
        for start in range(0, len(targets), TARGET_CHUNK):
            h, y = hidden[start : start + TARGET_CHUNK], targets[start : start + TARGET_CHUNK]
            if torch.is_grad_enabled() and h.requires_grad:  # keep no (chunk x vocab) tensor for the backward
                chunks.append(checkpoint(self._target_token_logprobs, h, y, use_reentrant=False))
            else:
                chunks.append(self._target_token_logprobs(h, y))
        logprobs = torch.cat(chunks)
        return -torch.stack([part.sum() for part in logprobs.split(counts)])

    def target_logprobs(
        self, token_ids: Sequence[Sequence[int]], target_ids: Sequence[Sequence[int]], prompt: PromptInput = None,
        max_row_tokens: int = 1024,
    ) -> torch.Tensor:
        """(T, vocab) float32: the full log-softmax at every position that predicts a target token, the
        examples' target positions concatenated in order (T = total target tokens), as `target_nll` computes
        them; for distillation over the whole vocabulary (a teacher prompt's distribution against a student's)."""
        if len(token_ids) == 0:
            return torch.zeros(0, self.vocab_size)
        hidden = self._target_hidden(token_ids, target_ids, prompt, max_row_tokens)[0]
        return torch.cat([torch.log_softmax(self._logits(hidden[s : s + TARGET_CHUNK]), dim=-1)
                          for s in range(0, hidden.shape[0], TARGET_CHUNK)])

    def _target_token_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log p(target) at each of these positions: full-vocabulary log-softmax, then the target's entry."""
        return torch.log_softmax(self._logits(hidden), dim=-1).gather(-1, targets[:, None])[:, 0]

    def _target_hidden(
        self, token_ids: Sequence[Sequence[int]], target_ids: Sequence[Sequence[int]], prompt: PromptInput,
        max_row_tokens: int,
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The hidden states (T, hidden) at the positions that predict target tokens, those tokens (T,), and
        each example's number of target tokens; packed like `score`, or padded where packing cannot be exact."""
        if len(target_ids) != len(token_ids):
            raise ModelError(f"{len(target_ids)} targets for {len(token_ids)} inputs")
        targets = [list(t) for t in target_ids]
        if any(len(t) == 0 for t in targets):
            raise ModelError("every target needs at least one token")
        resolved = resolve_prompt(self, token_ids, prompt)
        token_ids = self.fit(token_ids, resolved.length + max(map(len, targets)))
        counts = [len(t) for t in targets]
        steps = torch.cat([torch.arange(n) for n in counts])  # k-th target token of its example
        flat = torch.tensor([y for t in targets for y in t], dtype=torch.long, device=self.device)
        if self.attention.packable:
            shared = self._shares_prefix(resolved)
            layout = PackedLayout.for_targets(token_ids, targets, max_row_tokens,
                                              inline_prompt=0 if shared else resolved.length)
            hidden = self._packed_hidden(layout, resolved, shared)
            rows, last = layout.answer_row, layout.answer_col
        else:
            hidden, last = self._padded_hidden(token_ids, [t[:-1] for t in targets], resolved)
            rows, last = torch.arange(len(targets)), last.cpu()
        counts_t = torch.tensor(counts)
        rows = rows.repeat_interleave(counts_t).to(self.device)
        cols = (last.repeat_interleave(counts_t) + steps).to(self.device)  # the input's last token, then the target's
        return hidden[rows, cols], flat, counts

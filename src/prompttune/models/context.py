"""Fitting inputs into the model's context: how long they may be, and cutting the ones that are longer.

The limit is the model's context (its config's positions, or its tokenizer's maximum length, the
smaller) minus what goes beside the input: the prompt, the label words' extra tokens, generated
tokens. A cut input keeps its end (the answer cue) and the special tokens the tokenizer adds, so a
model without a BOS (SmolLM2) gets none invented. The first cut of a backbone warns, with a count.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence

from ..errors import ModelError

# transformers' tokenizers say int(1e30) when a checkpoint names no maximum length
_UNKNOWN_LENGTH = 10**9
# how many recently cut inputs a backbone remembers, so one cut twice (at tokenizing, then beside a prompt)
# counts once; bounded, so a long-running server's memory does not grow with every long request
_RECENT_CUTS = 4096


def model_context_length(model, tokenizer) -> int | None:
    """The positions the model was built for: its config's (`max_position_embeddings`, GPT-2's `n_positions`)
    and its tokenizer's `model_max_length`, the smaller of those that are set (None if neither is)."""
    config = model.config.get_text_config(decoder=True)
    lengths = []
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            lengths.append(value)
            break
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < _UNKNOWN_LENGTH:
        lengths.append(value)
    return min(lengths) if lengths else None


def _added_special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds before and after a text (SmolLM2: none; Llama, Gemma: BOS before)."""
    plain = tokenizer("a b", add_special_tokens=False)["input_ids"]
    full = tokenizer("a b", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


class ContextFitting:
    """`CausalLMBackbone`'s input limits (a mixin: it sets them up with `_init_context`)."""

    model_id: str

    def _init_context(self, model, tokenizer) -> None:
        self.context_length = model_context_length(model, tokenizer)
        self.max_input_tokens: int | None = None  # an optional cap below the context
        self._special_head, self._special_tail = _added_special_tokens(tokenizer)
        self._recent_cuts: OrderedDict[bytes, None] = OrderedDict()  # at most _RECENT_CUTS keys
        self._truncated_inputs = 0
        self._warned_truncation = False
        self._cuts_lock = threading.Lock()  # a server fits inputs from several threads

    @property
    def truncated_inputs(self) -> int:
        """How many inputs this backbone has cut to fit so far (one cut again soon after counts once)."""
        return self._truncated_inputs

    def _count_cut(self, x: Sequence[int]) -> bool:
        """Count a cut input unless it was cut recently (keyed on its end); True if it was counted."""
        key = hashlib.blake2b(repr(list(x[-32:])).encode(), digest_size=8).digest()
        with self._cuts_lock:
            if key in self._recent_cuts:
                self._recent_cuts.move_to_end(key)
                return False
            self._recent_cuts[key] = None
            if len(self._recent_cuts) > _RECENT_CUTS:
                self._recent_cuts.popitem(last=False)
            self._truncated_inputs += 1
            return True

    def input_limit(self, reserve: int = 0) -> int | None:
        """The most input tokens that fit beside `reserve` prompt/answer tokens (None: no limit known)."""
        limits = [n for n in (self.max_input_tokens,) if n is not None]
        if self.context_length is not None:
            if reserve >= self.context_length:
                raise ModelError(f"model '{self.model_id}' has a context of {self.context_length} positions; the "
                                 f"prompt and the answer take {reserve} of them, which leaves no room for an input")
            limits.append(self.context_length - reserve)
        return min(limits) if limits else None

    def fit(self, token_ids: Sequence[Sequence[int]], reserve: int = 0) -> list[list[int]]:
        """Inputs cut to `input_limit(reserve)`: each keeps its end and the special tokens the tokenizer
        added at either end (a BOS only where the model has one). The first cut warns, once per backbone."""
        limit = self.input_limit(reserve)
        if limit is None or all(len(x) <= limit for x in token_ids):
            return [list(x) for x in token_ids]
        out, cut = [], 0
        for x in token_ids:
            x = list(x)
            if len(x) > limit:
                head = len(self._special_head) if x[: len(self._special_head)] == self._special_head else 0
                tail = len(self._special_tail) if self._special_tail and x[-len(self._special_tail):] == \
                    self._special_tail else 0
                keep = max(limit - head - tail, 1)
                x = x[:head] + x[len(x) - tail - keep : len(x) - tail] + x[len(x) - tail :]
                x = x[len(x) - limit :]
                cut += self._count_cut(x)
            out.append(x)
        with self._cuts_lock:
            first, self._warned_truncation = cut and not self._warned_truncation, self._warned_truncation or bool(cut)
        if first:  # the first inputs this backbone cuts
            context = f"the model's context of {self.context_length} positions" if self.context_length else "the cap"
            warnings.warn(
                f"{cut} of {len(out)} inputs are longer than the {limit} tokens that fit ({context} minus {reserve} "
                f"for the prompt and the answer): they keep their last tokens and the tokenizer's special tokens. "
                f"Shown once; `backbone.truncated_inputs` counts every input cut.", UserWarning, stacklevel=3)
        return out

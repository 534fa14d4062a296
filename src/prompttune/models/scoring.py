"""What scoring takes and gives: label words, the prompt kinds, and class scores from word scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ModelError


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

    @property
    def answer_tokens(self) -> int:
        """Tokens a label word adds after the input (a word's tokens but its last)."""
        return max(len(w) for w in self.flat) - 1


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


def prompt_length(prompt: torch.Tensor | DeltaPrompt | None) -> int:
    """How many positions an input-embedding prompt takes before the input (0 for none)."""
    if prompt is None:
        return 0
    return (prompt.embeddings if isinstance(prompt, DeltaPrompt) else prompt).shape[-2]


def one_hot_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`table[index]` through a one-hot matmul: its gradient is a matmul too, so it is deterministic,
    where indexing's scatter-add backward is not (repeated indices, several threads)."""
    return F.one_hot(index, table.shape[0]).to(table.dtype) @ table


def class_scores(word_scores: torch.Tensor, labels: LabelWords) -> torch.Tensor:
    cols, start = [], 0
    for cls in labels.words:
        chunk = word_scores[:, start : start + len(cls)]
        cols.append(chunk[:, 0] if len(cls) == 1 else torch.logsumexp(chunk, dim=1))
        start += len(cls)
    return torch.stack(cols, dim=1)


@dataclass
class ResolvedPrompt:
    """A `PromptInput` taken apart once (`resolve_prompt`), for every path that places it: `score`,
    `target_nll`, the padded fallbacks and `generate`."""

    soft: torch.Tensor | None = None  # (n_tokens, hidden), or one per example (batch, n_tokens, hidden)
    prefix: Prefix | None = None  # a deep prompt: per-layer (keys, values)
    delta: torch.Tensor | None = None  # DePT's update of the input's own token embeddings

    @property
    def length(self) -> int:
        """Positions the prompt takes before the input."""
        if self.prefix is not None:
            return self.prefix[0][0].shape[-2]
        return 0 if self.soft is None else self.soft.shape[-2]

    @property
    def per_example(self) -> bool:
        return self.soft is not None and self.soft.dim() == 3

    def select(self, index: Sequence[int]) -> ResolvedPrompt:
        """The prompt of examples `index` (a per-example prompt keeps those rows; a shared one is unchanged)."""
        soft = self.soft[torch.tensor(list(index), dtype=torch.long, device=self.soft.device)] \
            if self.per_example else self.soft
        return ResolvedPrompt(soft, self.prefix, self.delta)

    def embedding_input(self) -> torch.Tensor | DeltaPrompt | None:
        """What `padded_inputs` takes: the soft prompt, with its input delta if any (not for deep prompts)."""
        return self.soft if self.delta is None else DeltaPrompt(self.soft, self.delta)


def resolve_prompt(backbone, token_ids: Sequence[Sequence[int]], prompt) -> ResolvedPrompt:
    """Take a `PromptInput` (or a module with `for_inputs`, called on these input ids) apart; a per-example
    prompt must have one row per example."""
    if hasattr(prompt, "for_inputs"):  # an input-dependent prompt: one prompt per example
        prompt = prompt.for_inputs(backbone, token_ids)
    if prompt is None:
        return ResolvedPrompt()
    if isinstance(prompt, DeltaPrompt):
        out = ResolvedPrompt(soft=prompt.embeddings, delta=prompt.input_delta)
    elif torch.is_tensor(prompt):
        out = ResolvedPrompt(soft=prompt)
    elif isinstance(prompt, (list, tuple)):
        out = ResolvedPrompt(prefix=prompt)
    else:
        raise ModelError(f"a prompt the backbone applies is embeddings, a DeltaPrompt, per-layer (keys, values) or a "
                         f"module with for_inputs, not a {type(prompt).__name__} (a text prompt renders the inputs)")
    if out.per_example and out.soft.shape[0] != len(token_ids):
        raise ModelError(f"per-example prompts: {out.soft.shape[0]} prompts for {len(token_ids)} examples")
    return out

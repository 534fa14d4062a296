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

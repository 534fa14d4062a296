"""Which vocabulary tokens a discrete search may use: readable words, not control or byte pieces."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..errors import ConfigError


@functools.lru_cache(maxsize=4)
def _word_tokens(tokenizer) -> tuple[int, ...]:
    special = set(tokenizer.all_special_ids)
    out = []
    for i in range(len(tokenizer)):
        if i in special:
            continue
        text = tokenizer.decode([i])
        word = text[1:] if text.startswith(" ") else text
        if len(word) >= 2 and word.isascii() and word.isalpha():
            out.append(i)
    return tuple(out)


def word_token_ids(tokenizer) -> torch.Tensor:
    """Ids of tokens that decode to a plain ASCII word (optionally with a leading space)."""
    return torch.tensor(_word_tokens(tokenizer), dtype=torch.long)


def read_word_list(path: str) -> list[str]:
    """One word or phrase per line (blank lines and #comments skipped); a clear error if unusable."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"word list {file} does not exist" if not file.exists() else f"word list {file} is not a file"
        )
    words = [w.strip() for w in file.read_text(encoding="utf-8").splitlines()]
    words = [w for w in words if w and not w.startswith("#")]
    if not words:
        raise ConfigError(f"word list {file} has no words (one per line)")
    return words



@functools.lru_cache(maxsize=4)
def _common_words(tokenizer, n: int) -> tuple[tuple[int, str], ...]:
    out = []
    for i in _word_tokens(tokenizer):  # ids ascend with BPE merge order: the most frequent words come first
        text = tokenizer.decode([i])
        if text.startswith(" ") and text[1:].islower() and len(text) > 3:
            out.append((i, text[1:]))
            if len(out) == n:
                break
    return tuple(out)


def common_words(tokenizer, n: int = 3000) -> list[str]:
    """The `n` most frequent lowercase whole-word tokens (a leading space, three letters or more): words an
    instruction or a separator line on a generative task is made of, where any readable token (word pieces,
    names, code) would only add noise to an instruction."""
    return [w for _, w in _common_words(tokenizer, n)]


def common_word_ids(tokenizer, n: int = 3000) -> torch.Tensor:
    """The token ids of `common_words` (with their leading space)."""
    return torch.tensor([i for i, _ in _common_words(tokenizer, n)], dtype=torch.long)

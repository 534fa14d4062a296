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

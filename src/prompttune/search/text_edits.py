"""Phrase- and word-level edits of a prompt's text, for edit search (GrIPS) and evolution (EvoPrompt-style GA)."""

from __future__ import annotations

import random
import re

import torch
import torch.nn.functional as F

from ..prompts.hard import split_template


def phrases(text: str, max_words: int = 3) -> list[str]:
    """Split at punctuation, then into chunks of at most `max_words` words (GrIPS edits phrases)."""
    out = []
    for clause in re.split(r"(?<=[,.;:!?])\s+", text.strip()):
        words = clause.split()
        out.extend(" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words))
    return [p for p in out if p]


def join(parts: list[str]) -> str:
    return " ".join(p for p in parts if p).strip()


class Neighbours:
    """Words whose input embeddings are nearest (cosine): the paraphrase operator without a paraphrase model."""

    def __init__(self, backbone, word_ids: torch.Tensor, k: int = 8):
        self.tok = backbone.tokenizer
        self.ids = word_ids
        self.table = F.normalize(backbone.embed(word_ids).detach().float().cpu(), dim=-1)
        self.k = k

    def of(self, word: str, rng: random.Random) -> str:
        """A random one of the `k` nearest words to `word` (`word` itself if it is not one readable token)."""
        ids = self.tok(" " + word, add_special_tokens=False)["input_ids"]
        where = (self.ids == ids[0]).nonzero() if len(ids) == 1 else None
        if where is None or not len(where):
            return word
        sims = self.table @ self.table[int(where[0, 0])]
        choices = sims.topk(self.k + 1).indices.tolist()[1:]
        return self.tok.decode([int(self.ids[rng.choice(choices)])]).strip()


def edit(text: str, op: str, rng: random.Random, deleted: list[str], neighbours: Neighbours) -> tuple[str, str | None]:
    """One GrIPS edit: (new text, the phrase it deleted or None)."""
    parts = phrases(text)
    if not parts:
        return text, None
    if op == "del" and len(parts) > 1:
        i = rng.randrange(len(parts))
        gone = parts.pop(i)
        return join(parts), gone
    if op == "swap" and len(parts) > 1:
        i, j = rng.sample(range(len(parts)), 2)
        parts[i], parts[j] = parts[j], parts[i]
        return join(parts), None
    if op == "add" and deleted:
        parts.insert(rng.randrange(len(parts) + 1), rng.choice(deleted))
        return join(parts), None
    # "par" (and any edit that cannot apply): replace one word by an embedding neighbour
    words = text.split()
    i = rng.randrange(len(words))
    words[i] = neighbours.of(words[i], rng)
    return " ".join(words), None


def crossover(a: str, b: str, rng: random.Random) -> str:
    """One-point crossover of two prompts' word lists (a's head, b's tail)."""
    wa, wb = a.split(), b.split()
    if not wa or not wb:
        return a or b
    return " ".join(wa[: rng.randint(1, len(wa))] + wb[rng.randint(0, len(wb) - 1) :])


def mutate(text: str, rng: random.Random, pool: list[str], rate: float = 0.3) -> str:
    """Replace, insert or delete words, each word touched with probability `rate` (at least one edit)."""
    words = text.split() or [rng.choice(pool)]
    out: list[str] = []
    touched = False
    for w in words:
        r = rng.random()
        if r < rate / 3:
            out.append(rng.choice(pool))
            touched = True
        elif r < 2 * rate / 3:
            out.extend([w, rng.choice(pool)])
            touched = True
        elif r < rate and len(words) > 1:
            touched = True
        else:
            out.append(w)
    if not touched:
        out[rng.randrange(len(out))] = rng.choice(pool)
    return " ".join(out) or rng.choice(pool)


def line_separator(template: str, text: str) -> str:
    """`text` as a separator of a generative template: its own line when the answer cue starts one (as in
    "Input: {input}\\nOutput:"), so that it does not run into the input the answer is about."""
    text = text.strip().replace("\n", " ")
    return ("\n" if split_template(template)[1].startswith("\n") else " ") + text

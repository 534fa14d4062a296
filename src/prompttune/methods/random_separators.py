"""Random separators ("Strings from the Library of Babel", Lu et al. 2024): sample many short strings,
put each between the input and the answer cue (or before the template, as an instruction), keep the
best. A strong, cheap baseline for every other search here.

Sources: random tokens of the vocabulary (readable word tokens), text sampled from the frozen model
itself, or words from a word list file.

On a generative task (a template like "Input: {input}\nOutput:") the vocabulary is the model's most
frequent whole words, a separator is a line of its own between the input and the answer cue, candidates
are ranked by the target's likelihood (one pass per example) and the finalists picked on dev by the
task's metric on greedy generations (one pass per generated token).
"""

from __future__ import annotations

import random
from typing import Literal

import torch
from pydantic import Field, model_validator

from ..prompts.hard import HardPrompt
from ..search.text_edits import line_separator
from ..search.vocab import common_words, read_word_list, word_token_ids
from .base import RunContext, register
from .family.search import HardPromptSearch, SearchConfig


class RandomSeparatorsConfig(SearchConfig):
    n_candidates: int = Field(48, ge=1, description="separators sampled and scored")
    source: Literal["vocab", "model", "words"] = Field("vocab", description="where separators come from")
    words_file: str | None = Field(None, description="word list, one per line (source=words)")
    min_tokens: int = Field(1, ge=1, description="shortest separator, in tokens (or words)")
    max_tokens: int = Field(4, ge=1, description="longest separator, in tokens (or words)")
    position: Literal["separator", "instruction"] = Field("separator", description="after the input, or before it")
    round_size: int = Field(8, ge=1, description="candidates scored per round (one checkpoint per round)")

    @model_validator(mode="after")
    def _check(self):
        if self.max_tokens < self.min_tokens:
            raise ValueError(f"max_tokens {self.max_tokens} is below min_tokens {self.min_tokens}")
        if self.source == "words" and not self.words_file:
            raise ValueError("source=words needs words_file=<path>")
        if self.words_file:
            read_word_list(self.words_file)  # a missing or empty file fails now, before anything is written
        return self


@register
class RandomSeparators(HardPromptSearch):
    name = "random-separators"
    description = "Babel: sample separators (vocabulary, the model itself, or a word list), keep the best on dev."
    Config = RandomSeparatorsConfig
    generative = True

    def first_round(self, ctx: RunContext) -> int:
        cfg: RandomSeparatorsConfig = self.config  # type: ignore[assignment]
        return min(cfg.round_size, cfg.n_candidates)

    def sample(self, ctx: RunContext) -> list[str]:
        cfg: RandomSeparatorsConfig = self.config  # type: ignore[assignment]
        rng = random.Random(ctx.seed)
        lengths = [rng.randint(cfg.min_tokens, cfg.max_tokens) for _ in range(cfg.n_candidates)]
        tok = ctx.backbone.tokenizer
        if cfg.source == "words":
            words = read_word_list(cfg.words_file)
            return [" " + " ".join(rng.choice(words) for _ in range(n)) for n in lengths]
        if cfg.source == "vocab" and ctx.task.is_generative:  # words, not word pieces, on a line of their own
            common = common_words(tok)
            return [" " + " ".join(rng.choice(common) for _ in range(n)) for n in lengths]
        if cfg.source == "vocab":
            vocab = word_token_ids(tok).tolist()
            return [tok.decode([rng.choice(vocab) for _ in range(n)]) for n in lengths]
        with torch.random.fork_rng(devices=[]):  # text the model itself writes, seeded
            torch.manual_seed(ctx.seed)
            texts = ctx.backbone.generate(
                ["\n"] * cfg.n_candidates, max_new_tokens=cfg.max_tokens, do_sample=True, temperature=1.0
            )
        out = []
        for text, n in zip(texts, lengths, strict=True):
            ids = tok(text, add_special_tokens=False)["input_ids"][:n]
            out.append(" " + tok.decode(ids).strip().replace("\n", " ") if ids else " .")
        return out

    def search(self, ctx: RunContext) -> None:
        cfg: RandomSeparatorsConfig = self.config  # type: ignore[assignment]
        texts = self.sample(ctx)
        template = ctx.task.spec.template
        own_line = ctx.task.is_generative
        build = (
            (lambda t: HardPrompt.build(template, separator=line_separator(template, t) if own_line else t))
            if cfg.position == "separator"
            else (lambda t: HardPrompt.build(template, instruction=t.strip()))
        )
        for i in range(0, len(texts), cfg.round_size):
            self.evaluate([build(t) for t in texts[i : i + cfg.round_size]])
            self.state.round_done()
            if self.out_of_budget:
                break

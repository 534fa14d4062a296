"""Evolutionary prompt search (EvoPrompt's genetic algorithm, with crossover and mutation done on
token spans instead of by an LLM).

A population of prompts (instructions before the template, or separators after the input) evolves:
parents are drawn by roulette wheel on fitness, children are one-point crossovers of their word
lists followed by word-level mutation (replace, insert, delete; words from the model's readable
vocabulary or a word list), and the best `population` of parents and children survive.

On a generative task the mutation words are the model's most frequent whole words, the seed instruction a
generic one ("Write the output for the input."), a separator a line of its own before the answer cue; the
population is ranked by the target's likelihood and the finalists picked on dev by the task's metric on
greedy generations.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field

from ..prompts.hard import HardPrompt
from ..search.text_edits import crossover, line_separator, mutate
from ..search.vocab import common_words, read_word_list, word_token_ids
from .base import RunContext, register
from .family.search import HardPromptSearch, SearchConfig, default_instruction


class EvolutionConfig(SearchConfig):
    population: int = Field(6, ge=2)
    generations: int = Field(6, ge=1)
    mutation_rate: float = Field(0.3, gt=0, le=1, description="chance that a word is mutated")
    position: Literal["instruction", "separator"] = Field("instruction")
    instruction: str | None = Field(
        None, description="seed prompt (default: built from the label words; a generative task: a generic one)"
    )
    words_file: str | None = Field(None, description="mutation words, one per line (default: the vocabulary)")


@register
class Evolution(HardPromptSearch):
    name = "evolution"
    description = "EvoPrompt-style GA without an LLM: roulette selection, span crossover, word mutation."
    Config = EvolutionConfig
    generative = True

    def first_round(self, ctx: RunContext) -> int:
        return self.config.population  # type: ignore[attr-defined]

    def search(self, ctx: RunContext) -> None:
        cfg: EvolutionConfig = self.config  # type: ignore[assignment]
        rng = random.Random(ctx.seed)
        tok = ctx.backbone.tokenizer
        if cfg.words_file:
            pool = read_word_list(cfg.words_file)
        elif ctx.task.is_generative:
            pool = common_words(tok)
        else:
            pool = [tok.decode([i]).strip() for i in word_token_ids(tok).tolist()]
        template = ctx.task.spec.template

        def build(text: str) -> HardPrompt:
            if cfg.position == "instruction":
                return HardPrompt.build(template, instruction=text)
            if ctx.task.is_generative:
                return HardPrompt.build(template, separator=line_separator(template, text))
            return HardPrompt.build(template, separator=" " + text)

        seed_text = cfg.instruction or (default_instruction(ctx) if cfg.position == "instruction" else rng.choice(pool))
        texts = [seed_text] + [mutate(seed_text, rng, pool, cfg.mutation_rate) for _ in range(cfg.population - 1)]
        fits = self.evaluate([build(t) for t in texts])
        population = list(zip(fits, texts, strict=False))
        self.state.round_done()
        for _ in range(cfg.generations):
            if self.out_of_budget or len(population) < 2:
                break
            low = min(f for f, _ in population)
            weights = [f - low + 1e-3 for f, _ in population]
            children = []
            for _ in range(cfg.population):
                (_, a), (_, b) = rng.choices(population, weights=weights, k=2)
                child = mutate(crossover(a, b, rng), rng, pool, cfg.mutation_rate)
                if child not in children and child not in [t for _, t in population]:
                    children.append(child)
            fits = self.evaluate([build(t) for t in children])
            population = sorted(population + list(zip(fits, children, strict=False)), key=lambda ft: -ft[0])
            population = population[: cfg.population]
            self.state.round_done()

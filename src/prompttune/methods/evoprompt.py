"""EvoPrompt (Guo et al., 2024): evolutionary search whose crossover and mutation are done by the LLM.

`variant=ga`: parents drawn by roulette wheel on fitness, the LLM crosses them over and mutates the
child; the population keeps the best of parents and children. `variant=de`: for each member, the
LLM mutates the parts where two random donors differ, merges them into the best member and crosses
the result with the member; the child replaces the member when it scores higher.

On a generative task (EvoPrompt's BBH and summarisation setting) the fitness is the target's
log-likelihood on train in-process (the metric with a task endpoint) and the pick on dev the task's metric.
"""

from __future__ import annotations

import random
from typing import ClassVar, Literal

from pydantic import Field

from .base import RunContext, register
from .family.llm import PARAPHRASE, LLMPromptSearch, LLMSearchConfig, extract_instructions

GA = """Please follow the instruction step-by-step to generate a better prompt.
1. Cross over the following prompts and generate a new prompt:
Prompt 1: {a}
Prompt 2: {b}
2. Mutate the prompt generated in Step 1 and generate a final prompt bracketed with <prompt> and </prompt>."""

DE = """Please follow the instruction step-by-step to generate a better prompt.
1. Identify the different parts between the Prompt 1 and Prompt 2:
Prompt 1: {a}
Prompt 2: {b}
2. Randomly mutate the different parts.
3. Combine the different parts with Prompt 3, selectively replace it with the different parts in step 2 and \
generate a new prompt.
Prompt 3: {best}
4. Cross over the prompt in the step 3 with the following basic prompt and generate a final prompt bracketed \
with <prompt> and </prompt>:
Basic Prompt: {base}"""

class EvoPromptConfig(LLMSearchConfig):
    variant: Literal["ga", "de"] = Field("ga", description="genetic algorithm or differential evolution")
    population: int = Field(4, ge=2, description="prompts in the population (the start + LLM paraphrases)")


@register
class EvoPrompt(LLMPromptSearch):
    name = "evoprompt"
    description = "EvoPrompt: GA or DE over instructions, with the LLM doing crossover and mutation."
    Config = EvoPromptConfig
    generative: ClassVar[bool] = True

    def search(self, ctx: RunContext) -> None:
        cfg: EvoPromptConfig = self.config  # type: ignore[assignment]
        rng = random.Random(ctx.seed)
        start = self.base.instruction
        population = {start: self.pool[self.base.template][1]}
        answers = self.ask([PARAPHRASE.format(prompt=start)], "init", n=cfg.population - 1)
        init = [t for a in answers[0] for t in extract_instructions(a, "<prompt>", "</prompt>")[:1]]
        for f, t in self.score_instructions(init, [{"op": "init", "parents": [start], "critique": None}] * len(init)):
            population[t] = f
        for step in range(cfg.iterations):
            members = list(population)
            if len(members) < 2:
                return
            if cfg.variant == "ga":
                population = self.ga_step(population, members, rng, step, cfg)
            else:
                population = self.de_step(population, members, rng, step)
            if self.out_of_budget:
                break

    def children(self, metas: list[str], parents: list[list[str]], step: int, op: str):
        answers = self.ask(metas, op)
        texts, origins = [], []
        for a, ps in zip(answers, parents, strict=False):
            for t in extract_instructions(a[0], "<prompt>", "</prompt>")[:1]:
                texts.append(t)
                origins.append({"op": op, "step": step, "parents": ps, "critique": a[0]})
        return self.score_instructions(texts, origins), origins

    def ga_step(self, population: dict[str, float], members: list[str], rng: random.Random, step: int,
                cfg: EvoPromptConfig) -> dict[str, float]:
        low = min(population.values())
        weights = [population[m] - low + 1e-3 for m in members]  # roulette wheel
        pairs = [rng.choices(members, weights=weights, k=2) for _ in range(len(members))]
        results, _ = self.children([GA.format(a=a, b=b) for a, b in pairs], [list(p) for p in pairs], step, "ga")
        merged = dict(population)
        merged.update({t: f for f, t in results})
        return dict(sorted(merged.items(), key=lambda kv: -kv[1])[: cfg.population])

    def de_step(self, population: dict[str, float], members: list[str], rng: random.Random,
                step: int) -> dict[str, float]:
        best = max(members, key=population.get)
        metas, parents = [], []
        for base in members:
            others = [m for m in members if m != base] or members
            a, b = (rng.sample(others, 2) if len(others) >= 2 else (others[0], others[0]))
            metas.append(DE.format(a=a, b=b, best=best, base=base))
            parents.append([base, a, b, best])
        results, origins = self.children(metas, parents, step, "de")
        updated = dict(population)
        for (f, t), origin in zip(results, origins, strict=False):
            base = origin["parents"][0]
            if f > updated.get(base, float("inf")) and base in updated:
                del updated[base]
                updated[t] = f
        return updated

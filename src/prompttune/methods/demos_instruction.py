"""Joint search over an instruction and a demonstration set, as MIPRO does (Opsahl-Ong et al., 2024,
"Optimizing Instructions and Demonstrations for Multi-Stage Language Model Programs"; DSPy's MIPROv2).

1. **Demonstration sets.** None; demos-random's labelled draw of k train examples; then `n_demo_sets`
   more seeded draws (sizes 1..k, order included).
2. **Instructions.** The starting instruction and `n_instructions` written by the optimiser LLM, each
   induced (APE's prompt) from a different demonstration set, so each proposal is grounded in the data as
   MIPRO's proposer is.
3. **Joint search.** MIPRO fits a surrogate (TPE) over (instruction, demo set) choices. Here the surrogate
   is additive and needs no library: the first rounds score every instruction without demonstrations and
   every demonstration set behind the starting instruction (the two marginals); the remaining `trials`
   combinations are then scored in the order of their predicted fitness (the start's, plus the
   instruction's gain, plus the set's gain), best first.

Every candidate is `HardPrompt.build(template, instruction, demos)`: plain text, applied like any hard
prompt. It is ranked on the train examples outside its own demonstrations and outside those its
instruction was induced from (the trace's `induced_from`; no leakage: see `family/demos.py`), and the
finalists are confirmed on dev by the task's metric (greedy generations on a generative task); the pick
replaces the start only when it wins the sign test on dev (`keep_start_unless_significant`). `--budget`
counts forward passes; the LLM budget counts calls and tokens.
"""

from __future__ import annotations

import random
from typing import ClassVar

from pydantic import Field

from ..prompts.hard import HardPrompt
from .ape import INDUCE
from .base import MethodConfig, RunContext, register
from .family.demos import DemoRanking, check_pool, demos_prompt, labelled_draw
from .family.llm import LLMPromptSearch, LLMSearchConfig, example_lines, extract_instructions


class DemosInstructionConfig(LLMSearchConfig):
    k: int = Field(4, ge=1, description="most demonstrations in a set (drawn from the --shots pool)")
    n_demo_sets: int = Field(3, ge=0, description="seeded demonstration sets beside none and the labelled draw")
    n_instructions: int = Field(3, ge=0, description="instructions the optimiser LLM induces from demonstrations")
    trials: int = Field(6, ge=0, description="(instruction, demo set) combinations scored after the marginals")


@register
class DemosInstruction(DemoRanking, LLMPromptSearch):
    name = "demos-instruction"
    description = "MIPRO-style joint search over an LLM-written instruction and a set of demonstrations."
    Config: ClassVar[type[MethodConfig]] = DemosInstructionConfig
    generative = True

    def first_round(self, ctx: RunContext) -> int:
        cfg: DemosInstructionConfig = self.config  # type: ignore[assignment]
        return 2 + cfg.n_demo_sets

    def start(self, ctx: RunContext, labels=None) -> None:
        cfg: DemosInstructionConfig = self.config  # type: ignore[assignment]
        check_pool(self.name, cfg.k, len(ctx.data.train), spare=1)  # before anything runs
        self.induced_from: dict[str, tuple[int, ...]] = {}  # instruction -> the train examples the LLM saw
        super().start(ctx, labels)

    def search(self, ctx: RunContext) -> None:
        cfg: DemosInstructionConfig = self.config  # type: ignore[assignment]
        n = len(ctx.data.train)
        start = self.base.instruction
        sets: list[list[int]] = [[], labelled_draw(n, cfg.k, ctx.seed)]
        for i in range(cfg.n_demo_sets):
            rng = random.Random(f"{ctx.seed}:mipro:{i}")
            sets.append(rng.sample(range(n), rng.randint(1, cfg.k)))
        # demonstration sets behind the starting instruction: one marginal
        set_fit = dict(enumerate(self.score_demos([(start, s) for s in sets], "demos")))
        base_fit = set_fit.get(0, self.pool[self.base.template][1])
        # instructions induced from the sets (grounded proposals), scored without demonstrations: the other
        sources = [s for s in (sets[1:] * cfg.n_instructions)[: cfg.n_instructions] if s]
        metas = [INDUCE.format(n=len(s), demos="\n\n".join(example_lines(ctx, [ctx.data.train[i] for i in s])))
                 for s in sources]
        instructions = [start]
        for answer, source in zip(self.ask(metas, "induce") if metas else [], sources, strict=False):
            for text in extract_instructions(answer[0])[:1]:
                if text not in instructions:
                    instructions.append(text)
                    self.induced_from[text] = tuple(source)
        ins_fit = {0: base_fit}
        fits = self.score_demos([(t, []) for t in instructions[1:]], "instruction")
        ins_fit.update({i + 1: f for i, f in enumerate(fits)})
        if self.out_of_budget:
            return
        # the additive surrogate: predicted fitness of every unscored combination, best first
        predicted = sorted(
            ((base_fit + (ins_fit[i] - base_fit) + (set_fit[j] - base_fit), i, j)
             for i in ins_fit for j in set_fit if i > 0 and j > 0), reverse=True)
        for _, i, j in predicted[: cfg.trials]:
            self.score_demos([(instructions[i], sets[j])], "joint")
            if self.out_of_budget:
                break

    def score_demos(self, combos: list[tuple[str, list[int]]], op: str) -> list[float]:
        """Train fitness of each (instruction, demo set) prompt, one round; as many as the budget pays for."""
        prompts: list[HardPrompt] = []
        origins = []
        for instruction, demos in combos:
            prompt = demos_prompt(self.ctx, demos, instruction)
            seen = self.induced_from.get(instruction, ())
            # ranked outside its demonstrations and the examples its instruction was induced from (it may quote them)
            self.demo_sets[prompt.template] = tuple(dict.fromkeys([*demos, *seen]))
            prompts.append(prompt)
            origins.append({"op": op, "instruction": instruction, "demos": list(demos), "induced_from": list(seen)})
        fits = self.evaluate(prompts, origins)
        self.state.round_done()
        return fits

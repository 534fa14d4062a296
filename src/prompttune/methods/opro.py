"""OPRO (Yang et al., 2023, "Large Language Models as Optimizers").

Each step shows the optimiser LLM a meta-prompt: the best instructions so far with their scores
(ascending, so the best comes last) and a few task examples, and asks for a new instruction that
scores higher; several are sampled per step, scored, and join the trajectory.
"""

from __future__ import annotations

import random

from pydantic import Field

from .base import RunContext, register
from .family.llm import LLMPromptSearch, LLMSearchConfig, example_lines, extract_instructions

META = """Your task is to generate the instruction <INS>. Below are some previous instructions with their scores. \
The score ranges from 0 to 100.

{trajectory}

Below are some problems.

{examples}

Generate an instruction that is different from all the instructions <INS> above, and has a higher score than all \
the instructions <INS> above. The instruction should begin with <INS> and end with </INS>. The instruction should \
be concise, effective, and generally applicable to all problems above."""


class OPROConfig(LLMSearchConfig):
    candidates_per_step: int = Field(4, ge=1, description="instructions sampled per step")
    max_trajectory: int = Field(20, ge=1, description="best (instruction, score) pairs in the meta-prompt")
    n_examples: int = Field(3, ge=0, description="task examples in the meta-prompt")
    llm_temperature: float = Field(1.0, ge=0.0, le=2.0)


@register
class OPRO(LLMPromptSearch):
    name = "opro"
    description = "OPRO: the LLM reads the scored trajectory of instructions and proposes better ones."
    Config = OPROConfig

    def search(self, ctx: RunContext) -> None:
        cfg: OPROConfig = self.config  # type: ignore[assignment]
        rng = random.Random(ctx.seed)
        scored = {self.base.instruction: self.pool[self.base.template][1]}
        for step in range(cfg.iterations):
            best = sorted(scored.items(), key=lambda kv: kv[1])[-cfg.max_trajectory :]
            trajectory = "\n\n".join(f"text:\n{t}\nscore:\n{round(100 * max(s, 0.0))}" for t, s in best)
            shown = rng.sample(ctx.data.train, min(cfg.n_examples, len(ctx.data.train)))
            examples = "\n\n".join(e.replace("Input: ", "input:\nQ: <INS>\n").replace("\nOutput: ", "\nA:\n")
                                   for e in example_lines(ctx, shown))
            meta = META.format(trajectory=trajectory, examples=examples)
            answers = self.ask([meta], "propose", n=cfg.candidates_per_step)
            texts = [t for a in answers[0] for t in extract_instructions(a, "<INS>", "</INS>")[:1]]
            new = [t for t in dict.fromkeys(texts) if t not in scored]
            results = self.score_instructions(new, [{"op": "propose", "step": step, "parents": [t for t, _ in best],
                                                     "critique": None} for _ in new])
            scored.update({t: f for f, t in results})
            if self.out_of_budget:
                break

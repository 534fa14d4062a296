"""APE (Zhou et al., 2023, "Large Language Models Are Human-Level Prompt Engineers").

Instruction induction: the LLM sees input-output demonstrations and completes "The instruction
was"; several proposals are sampled, scored, and the best are resampled Monte-Carlo style (the LLM
writes variations of them, which are scored in turn) for `iterations` rounds.

On a generative task this is the paper's own setting: the demonstrations are the task's input-output
pairs (the target text, not a label word); candidates are ranked by the target's log-likelihood (APE's
"log probability" score) and the pick on dev is by the task's metric (its "execution accuracy").
"""

from __future__ import annotations

import random
from typing import ClassVar

from pydantic import Field

from .base import RunContext, register
from .family.llm import PARAPHRASE, LLMPromptSearch, LLMSearchConfig, example_lines, extract_instructions

INDUCE = """I gave a friend an instruction and {n} inputs. The friend read the instruction and wrote an output for \
every one of the inputs. Here are the input-output pairs:

{demos}

The instruction was"""

class APEConfig(LLMSearchConfig):
    n_proposals: int = Field(4, ge=1, description="instructions induced from demonstrations")
    n_demos: int = Field(5, ge=1, description="demonstrations per induction prompt")
    keep: int = Field(2, ge=1, description="best instructions resampled each round")
    resamples: int = Field(2, ge=1, description="variations per kept instruction per round")


@register
class APE(LLMPromptSearch):
    name = "ape"
    description = "APE: instructions induced from demonstrations, then Monte-Carlo resampling of the best."
    Config = APEConfig
    generative: ClassVar[bool] = True

    def search(self, ctx: RunContext) -> None:
        cfg: APEConfig = self.config  # type: ignore[assignment]
        rng = random.Random(ctx.seed)
        metas = []
        for _ in range(cfg.n_proposals):
            demos = rng.sample(ctx.data.train, min(cfg.n_demos, len(ctx.data.train)))
            metas.append(INDUCE.format(n=len(demos), demos="\n\n".join(example_lines(ctx, demos))))
        answers = self.ask(metas, "induce")
        texts, origins = [], []
        for a in answers:
            for t in extract_instructions(a[0])[:1]:
                texts.append(t)
                origins.append({"op": "induce", "parents": [], "critique": a[0]})
        scored = {self.base.instruction: self.pool[self.base.template][1]}
        scored.update({t: f for f, t in self.score_instructions(texts, origins)})
        for step in range(cfg.iterations - 1):
            top = sorted(scored, key=lambda t: -scored[t])[: cfg.keep]
            answers = self.ask([PARAPHRASE.format(prompt=t) for t in top], "resample", n=cfg.resamples)
            texts, origins = [], []
            for parent, a in zip(top, answers, strict=False):
                for variant in a:
                    for t in extract_instructions(variant)[:1]:
                        if t not in scored:
                            texts.append(t)
                            origins.append({"op": "resample", "step": step, "parents": [parent], "critique": None})
            scored.update({t: f for f, t in self.score_instructions(texts, origins)})
            if self.out_of_budget:
                break

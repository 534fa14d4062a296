"""OPRO (Yang et al., 2023, "Large Language Models as Optimizers").

Each step shows the optimiser LLM a meta-prompt: the best instructions so far with their scores
(ascending, so the best comes last) and a few task examples, and asks for a new instruction that
scores higher; several are sampled per step, scored, and join the trajectory.

The scores in the meta-prompt are, as in the paper, the task's score on the training examples in 0-100:
the accuracy on a classification task; on a generative task the primary metric (exact match, F1, ...) of
the candidate's greedy answers on the train examples (`MetricScorer`, or the task endpoint's answers), not
the target likelihood the search ranks by in-process: the optimiser LLM reads the number the user cares
about, on a 0-100 scale it understands. Train, not dev: dev stays unseen by the optimiser, for the final
pick and the sign test against the start. The trace rows carry it as `train_metric`, and the trajectory is
ordered by it (ties by likelihood).
"""

from __future__ import annotations

import random
from typing import ClassVar

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
    generative: ClassVar[bool] = True

    def search(self, ctx: RunContext) -> None:
        cfg: OPROConfig = self.config  # type: ignore[assignment]
        rng = random.Random(ctx.seed)
        # the meta-prompt's score: the train fitness itself where it is the task's score, else the metric
        self.meter = None
        if ctx.task.is_generative and getattr(self.train_scorer, "kind", None) != "metric":
            self.meter = self.make_scorer(ctx.data.train, "train", confirm=True)
        # instruction -> (shown score in [0, 1], train fitness)
        start = self.pool[self.base.template][1]
        start_shown = (self.shown([self.base.instruction]) or [0.0])[0]
        scored = {self.base.instruction: (start_shown, start)}
        if self.meter is not None:
            for row in self.state.trace:
                if row.get("op") == "start":
                    row["train_metric"] = round(start_shown, 6)
        for step in range(cfg.iterations):
            best = sorted(scored.items(), key=lambda kv: kv[1])[-cfg.max_trajectory :]
            trajectory = "\n\n".join(f"text:\n{t}\nscore:\n{round(100 * max(s, 0.0))}" for t, (s, _) in best)
            shown = rng.sample(ctx.data.train, min(cfg.n_examples, len(ctx.data.train)))
            examples = "\n\n".join(e.replace("Input: ", "input:\nQ: <INS>\n").replace("\nOutput: ", "\nA:\n")
                                   for e in example_lines(ctx, shown))
            meta = META.format(trajectory=trajectory, examples=examples)
            answers = self.ask([meta], "propose", n=cfg.candidates_per_step)
            texts = [t for a in answers[0] for t in extract_instructions(a, "<INS>", "</INS>")[:1]]
            new = [t for t in dict.fromkeys(texts) if t not in scored]
            shown = self.shown(new) if self.meter is not None else []
            new = new[: len(shown)] if self.meter is not None else new  # what the budget paid a metric for
            extra = [{"train_metric": round(m, 6)} for m in shown] if shown else [{} for _ in new]
            results = self.score_instructions(new, [{"op": "propose", "step": step, "parents": [t for t, _ in best],
                                                     "critique": None, **x} for x in extra])
            shown_of = dict(zip(new, shown, strict=False))
            scored.update({t: (shown_of.get(t, f), f) for f, t in results})
            if self.out_of_budget:
                break

    def shown(self, instructions: list[str]) -> list[float]:
        """The score the meta-prompt shows (in [0, 1], printed x100) of each instruction the budget pays for:
        the train fitness on a classification task or with a task endpoint; in-process on a generative task,
        the metric on the train answers."""
        if self.meter is None:
            return [self.pool[self.prompt(t).template][1] for t in instructions]
        return [self.meter.fitness(s) for s in self.meter.score([self.prompt(t) for t in instructions])]

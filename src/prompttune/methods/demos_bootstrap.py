"""Bootstrapped demonstrations with random search (DSPy's BootstrapFewShotWithRandomSearch, Khattab et al.
2023), on a frozen model and a hard prompt.

1. **Bootstrap.** A teacher prompt, the template behind k labelled demonstrations (the seeded draw
   demos-random makes), answers every train example; the teacher leaves an example out of its own
   demonstrations while it answers that example, as DSPy does. The examples it answers correctly (the
   task's primary metric at least `threshold` on its greedy answer; on a classification task, the label
   it scores highest) are the bootstrapped pool: examples this model demonstrably reads right.
2. **Candidates.** The zero-demo template; the labelled draw itself (demos-random's prompt); the first k
   bootstrapped examples in train order (topped up with labelled ones when fewer are correct); then
   `n_candidates` random sets, each from its own seeded shuffle of the pool with a size drawn in 1..k:
   even ones bootstrapped (the correct examples first in the shuffled order, topped up with labelled ones),
   odd ones labelled (the first examples of the shuffle, correct or not). Order is part of a candidate.
3. **Ranking, then picking on dev** (`HardPromptSearch`): every candidate is scored on the train pool
   (the target's likelihood on a generative task, label scores on a classification task), the best
   `finalists` and the plain template are confirmed on dev by the task's metric (greedy generations on a
   generative task) and the best on dev is the result, so it is never worse on dev than the template.

**Leakage.** A candidate scored on a train example among its own demonstrations sees that example's
answer a few lines above the question and would be ranked on copying. So a candidate is ranked only on
the train examples outside its demonstration set (`family/demos.py` `DemoRanking`; the trace's
"ranked_on" counts them), which is why k must leave at least one pool example over; the pick itself is
on dev, which no candidate contains.

`--budget` counts forward passes, as every search: the teacher's generations (one per generated token, at
most `max_new_tokens` per example; one per example on a classification task), each candidate's pass per
train example, and the finalists on dev (reserved up front).
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

from pydantic import Field

from ..prompts.hard import HardPrompt
from ..search.engine import CandidateScorer
from ..search.generative import MetricScorer
from .base import MethodConfig, RunContext, register
from .family.demos import DemoRanking, DemosConfig, check_pool, demos_prompt, labelled_draw
from .family.search import HardPromptSearch, SearchConfig, check_budget, resolved_budget


class DemosBootstrapConfig(DemosConfig, SearchConfig):
    n_candidates: int = Field(8, ge=0, description="random demonstration sets scored beside the fixed ones")
    threshold: float = Field(1.0, description="a teacher's answer counts as correct when the task's primary "
                             "metric reaches this (generative tasks)")
    round_size: int = Field(4, ge=1, description="candidates scored per round (one checkpoint per round)")
    finalists: int = Field(4, ge=1, description="best candidates on train re-scored on dev to pick the result")


@register
class DemosBootstrap(DemoRanking, HardPromptSearch):
    name = "demos-bootstrap"
    description = ("DSPy's BootstrapFewShotWithRandomSearch: demonstrations the model answers right, random "
                   "sets and orders, best on dev.")
    Config: ClassVar[type[MethodConfig]] = DemosBootstrapConfig
    generative = True

    # ------------------------------------------------------------------ budget and setup
    def start(self, ctx: RunContext, labels=None) -> None:
        """The pool and budget checks (teacher, first candidates, dev reserve), before anything runs."""
        cfg: DemosBootstrapConfig = self.config  # type: ignore[assignment]
        n, n_dev = len(ctx.data.train), len(ctx.data.dev)
        check_pool(self.name, cfg.k, n, spare=1)
        generative = ctx.task.is_generative
        per = ctx.task.generation.max_new_tokens if generative else 1
        reserve = (cfg.finalists + 1 + self.extra_finalists) * n_dev * per
        budget = resolved_budget(cfg, ctx, reserve)
        unit = f" x {per} generated tokens" if generative else ""
        confirmed = cfg.finalists + 1 + self.extra_finalists
        check_budget(self.name, budget, n * per + 3 * n + reserve,
                     f"the teacher answering {n} train examples{unit}, the template and 2 demonstration sets x {n} "
                     f"train examples, then {confirmed} finalists x {n_dev} dev examples{unit}")
        super().start(ctx, labels)

    def base_prompt(self, ctx: RunContext) -> HardPrompt:
        return HardPrompt.build(ctx.task.spec.template, instruction=self.config.instruction)  # type: ignore[attr-defined]

    extra_finalists = 1  # the labelled draw

    def also_confirm(self) -> list[HardPrompt]:
        """The labelled draw (demos-random's prompt) is always confirmed on dev: never worse on dev than it."""
        cfg: DemosBootstrapConfig = self.config  # type: ignore[assignment]
        return [demos_prompt(self.ctx, labelled_draw(len(self.ctx.data.train), cfg.k, self.ctx.seed), cfg.instruction)]

    # ------------------------------------------------------------------ the search
    def search(self, ctx: RunContext) -> None:
        cfg: DemosBootstrapConfig = self.config  # type: ignore[assignment]
        n = len(ctx.data.train)
        labelled = labelled_draw(n, cfg.k, ctx.seed)
        correct = self.bootstrap(ctx, labelled)
        self.state.round_done()
        sets: list[tuple[str, list[int]]] = [
            ("labelled", labelled),
            ("bootstrapped", self.compose(list(range(n)), cfg.k, correct)),
        ]
        for i in range(cfg.n_candidates):
            rng = random.Random(f"{ctx.seed}:{i}")
            order = list(range(n))
            rng.shuffle(order)
            size = rng.randint(1, cfg.k)
            if i % 2 == 0:
                sets.append((f"random-{i}-bootstrapped", self.compose(order, size, correct)))
            else:
                sets.append((f"random-{i}-labelled", order[:size]))
        seen: set[tuple[int, ...]] = set()
        todo: list[tuple[str, list[int]]] = []
        for source, idx in sets:
            if tuple(idx) not in seen:
                seen.add(tuple(idx))
                todo.append((source, idx))
        self.n_correct = sum(correct)
        for r in range(0, len(todo), cfg.round_size):
            chunk = todo[r : r + cfg.round_size]
            prompts = [demos_prompt(ctx, idx, cfg.instruction) for _, idx in chunk]
            for p, (_, idx) in zip(prompts, chunk, strict=True):
                self.demo_sets[p.template] = tuple(idx)
            self.evaluate(prompts, [{"source": s, "demos": list(idx)} for s, idx in chunk])
            self.state.round_done()
            if self.out_of_budget:
                break

    def bootstrap(self, ctx: RunContext, labelled: list[int]) -> list[bool]:
        """Per train example, whether the teacher (the labelled demonstrations, less the example itself)
        answers it correctly; False for examples the budget could not pay for."""
        cfg: DemosBootstrapConfig = self.config  # type: ignore[assignment]
        n = len(ctx.data.train)
        inside = set(labelled)
        groups = [([i for i in range(n) if i not in inside], labelled)]
        groups += [([j], [t for t in labelled if t != j]) for j in labelled]
        correct = [False] * n
        for g, (examples, demos) in enumerate(groups):
            if not examples:
                continue
            ok = self.answers_correctly(ctx, demos_prompt(ctx, demos, cfg.instruction), examples, f"teacher{g}")
            if ok is None:
                break
            for i, o in zip(examples, ok, strict=True):
                correct[i] = o
        return correct

    def answers_correctly(self, ctx: RunContext, prompt: HardPrompt, indices: list[int],
                          name: str) -> list[bool] | None:
        """Whether the model answers each train example at `indices` correctly behind `prompt` (None when
        the budget cannot pay for it)."""
        cfg: DemosBootstrapConfig = self.config  # type: ignore[assignment]
        examples = [ctx.data.train[i] for i in indices]
        if ctx.task.is_generative:
            scorer = MetricScorer(ctx.backbone, ctx.task, examples, self.state, name)
            got = scorer.score([prompt])
            return (scorer.per_example(got[0]) >= cfg.threshold).tolist() if got else None
        labels = CandidateScorer(ctx.backbone, ctx.task, self.labels, examples, self.state, name)
        got = labels.score([prompt])
        return (got[0].argmax(1) == labels.golds).tolist() if got else None

    @staticmethod
    def compose(order: list[int], size: int, correct: list[bool]) -> list[int]:
        """`size` demonstrations: the correct examples first, in `order`, then the others (labelled) in `order`."""
        boot = [i for i in order if correct[i]][:size]
        rest = [i for i in order if i not in set(boot)][: size - len(boot)]
        return boot + rest

    def finish(self, extra_info: dict[str, Any] | None = None):
        chosen_info = {"bootstrapped": getattr(self, "n_correct", 0), "pool": len(self.ctx.data.train),
                       **(extra_info or {})}
        result = super().finish(chosen_info)
        template = (result.text_prompt or {}).get("template", "")
        result.info["demos"] = list(self.demo_sets.get(template, ()))
        return result

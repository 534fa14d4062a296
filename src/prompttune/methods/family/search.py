"""What every discrete / black-box search shares: the budget check, the candidate pool, the final
pick on dev, and the artifact.

A search method subclasses `HardPromptSearch` and writes `search(ctx)`, calling `self.evaluate(prompts)`
(which scores on the k-shot train set, charges the budget, records the trace) and `self.state.round_done()`
after each round. The best `finalists` candidates on train, and the plain template, are then scored
on dev and the best there is the result, so a search never returns a prompt worse on dev than the
template it started from. Dev scoring is paid from the same budget (reserved up front).

`check_budget` is the one budget check of every query-counting method (the searches here, bbt,
prompt-boosting, select): too small a `--budget` fails before anything is written, naming what one
round needs and the `--budget` to pass.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from ...errors import ConfigError
from ...prompts.hard import HardPrompt
from ...search.engine import CandidateScorer
from ...search.generative import LikelihoodScorer, MetricScorer
from ...search.state import SearchState
from ..base import Method, MethodConfig, MethodResult, RunContext


def check_budget(method: str, budget: int | None, needed: int, parts: str, instead: str = "") -> None:
    """Refuse a `--budget` (None: unlimited) below what one evaluation round of `method` needs: `needed`
    forward passes, made of `parts` (said in words). `instead` names another way out (fewer candidates)."""
    if budget is not None and budget < needed:
        raise ConfigError(f"--budget {budget} is smaller than one evaluation round of '{method}': {needed} forward "
                          f"passes ({parts}); pass at least --budget {needed}{f' or {instead}' if instead else ''}")


def resolved_budget(cfg: Any, ctx: RunContext, reserve: int) -> int:
    """`--budget`, grown by the dev pick's `reserve` when it was left unset on a generative task (whose dev pick
    generates answers, `max_new_tokens` passes each at worst); the run identity records which
    (`Method.run_identity`)."""
    if ctx.task.is_generative and "budget" not in cfg.model_fields_set:
        return cfg.budget + reserve
    return cfg.budget


def default_instruction(ctx: RunContext) -> str:
    """A plain instruction built from the task's label words (a generative task's: a generic one): where
    instruction searches start."""
    if ctx.task.is_generative:
        return "Write the output for the input."
    words = [w[0].strip() for w in ctx.task.words()]
    return f"Classify the text as one of: {', '.join(words)}."


class SearchConfig(MethodConfig):
    budget: int = Field(
        3000,
        ge=1,
        description="forward passes (one prompt on one example) the search may spend, picking on dev included",
    )
    finalists: int = Field(3, ge=1, description="best candidates on train re-scored on dev to pick the result")


class HardPromptSearch(Method):
    """Base of methods whose result is a hard prompt (text)."""

    Config: ClassVar[type[MethodConfig]] = SearchConfig
    text_result: ClassVar[bool] = True  # the result is text: it can be evaluated on other models (--port-to)
    extra_finalists: ClassVar[int] = 0  # how many prompts `also_confirm` adds to the dev pick

    # ------------------------------------------------------------------ for subclasses
    def first_round(self, ctx: RunContext) -> int:
        """How many candidates the first round scores on train (for the budget check)."""
        return 1

    def search(self, ctx: RunContext) -> None:
        raise NotImplementedError

    def base_prompt(self, ctx: RunContext) -> HardPrompt:
        return HardPrompt.build(ctx.task.spec.template)

    def also_confirm(self) -> list[HardPrompt]:
        """Candidates scored on dev beside the best `finalists` and the start whatever their train rank (the
        result is then never worse on dev than they are); each one's dev pass is reserved (`extra_finalists`)."""
        return []

    # ------------------------------------------------------------------ shared
    def start(self, ctx: RunContext, labels=None) -> None:
        """Budget check, state, scorers. Raises before anything is written when the budget is too small.

        On a generative task the train scorer is the target likelihood (one pass per example) and the dev
        scorer the metric on greedy generations (up to `max_new_tokens` passes per example, reserved at
        that worst case); the default `--budget` then pays for that reserve on top of its 3000."""
        cfg: SearchConfig = self.config  # type: ignore[assignment]
        self.ctx = ctx
        self.labels = labels or ctx.labels
        n_train, n_dev, k = len(ctx.data.train), len(ctx.data.dev), self.first_round(ctx)
        per_dev = self.dev_passes_per_example(ctx)
        self.reserve = (cfg.finalists + 1 + self.extra_finalists) * n_dev * per_dev
        self.budget = resolved_budget(cfg, ctx, self.reserve)
        unit = f" x {per_dev} generated tokens" if per_dev > 1 else ""
        confirmed = cfg.finalists + 1 + self.extra_finalists
        check_budget(self.name, self.budget, (1 + k) * n_train + self.reserve,
                     f"the template and {k} candidate(s) x {n_train} train examples, then {confirmed} "
                     f"finalists x {n_dev} dev examples{unit} to pick the result")
        self.state = SearchState(ctx.out_dir, self.budget - self.reserve, ctx.resume, ctx.run_fingerprint,
                                 ctx.callbacks)
        self.train_scorer = self.scorer(ctx.data.train, "train")
        self.dev_scorer = self.scorer(ctx.data.dev, "dev", confirm=True)
        self.pool: dict[str, tuple[HardPrompt, float]] = {}

    def dev_passes_per_example(self, ctx: RunContext) -> int:
        """The most one dev example costs: one pass, or generating an answer (`max_new_tokens` passes)."""
        return ctx.task.generation.max_new_tokens if ctx.task.is_generative else 1

    def scorer(self, examples, name: str, confirm: bool = False):
        """Scores prompts on `examples`: label scores on a classification task; on a generative task the
        target likelihood, or (`confirm`) the metric on greedy generations."""
        ctx = self.ctx
        if not ctx.task.is_generative:
            return CandidateScorer(ctx.backbone, ctx.task, self.labels, examples, self.state, name)
        cls = MetricScorer if confirm else LikelihoodScorer
        return cls(ctx.backbone, ctx.task, examples, self.state, name)

    def fit(self, ctx: RunContext) -> MethodResult:
        self.start(ctx)
        self.base = self.base_prompt(ctx)
        self.evaluate([self.base])
        self.search(ctx)
        return self.finish()

    def evaluate(self, prompts: list[HardPrompt], origins: list[dict[str, Any]] | None = None) -> list[float]:
        """Train fitness of each prompt (accuracy, ties by cross-entropy), as many as the budget pays for.
        `origins` (one dict per prompt) go into the trace beside the score: how the candidate was made."""
        scores = self.train_scorer.score(prompts)
        out = []
        for i, (prompt, s) in enumerate(zip(prompts, scores, strict=False)):
            fit = self.train_scorer.fitness(s)
            if prompt.template not in self.pool:
                fitness = getattr(self.train_scorer, "fitness_name", "target log-likelihood per token")
                fields = {"fitness": fitness} if self.ctx.task.is_generative else {}
                self.state.record(fit, candidate=prompt.describe(), **fields, **(origins[i] if origins else {}))
            self.pool[prompt.template] = (prompt, fit)
            out.append(fit)
        return out

    @property
    def out_of_budget(self) -> bool:
        return self.state.exhausted

    def finish(self, extra_info: dict[str, Any] | None = None) -> MethodResult:
        cfg: SearchConfig = self.config  # type: ignore[assignment]
        self.state.limit = self.budget  # the reserve is now spent on dev
        ranked = sorted(self.pool.values(), key=lambda pf: -pf[1])
        finalists = [p for p, _ in ranked[: cfg.finalists]]
        for prompt in [self.base, *self.also_confirm()]:  # the start (and a method's own reference prompts)
            if prompt.template in self.pool and prompt.template not in {p.template for p in finalists}:
                finalists.append(prompt)
        dev_scores = self.dev_scorer.score(finalists)
        dev_fit = [self.dev_scorer.fitness(s) for s in dev_scores]
        best = max(range(len(dev_fit)), key=lambda i: (dev_fit[i], self.pool[finalists[i].template][1]))
        chosen = finalists[best]
        if self.ctx.task.is_generative:  # the trace ranks on likelihood; say what the finalists scored on dev
            for p, f in zip(finalists, dev_fit, strict=True):
                self.state.trace.append({"queries": self.state.used, "stage": "dev", "candidate": p.describe(),
                                         "metric": self.ctx.task.primary_metric, "score": round(f, 6)})
        self.state.round_done()
        info = {
            "queries_used": self.state.used,
            "budget": self.budget,
            "candidates_scored": len(self.pool),
            "train_fitness": self.pool[chosen.template][1],
            "dev_fitness": dev_fit[best],
            "finalists": [
                {"prompt": p.describe(), "train": self.pool[p.template][1], "dev": f}
                for p, f in zip(finalists, dev_fit, strict=True)
            ],
            **(extra_info or {}),
        }
        return MethodResult(
            prompt_kind="hard",
            tensors={},
            trainable_parameters=0,
            history=self.state.trace,
            info=info,
            text_prompt=chosen.as_meta(),
        )

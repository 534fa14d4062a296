"""APO / ProTeGi (Pryzant et al., 2023): "gradient descent" in text with beam search.

Each step, for every prompt in the beam: the examples it gets wrong on a minibatch go to the
optimiser LLM, which says why (the textual gradient); the LLM then edits the prompt against each
gradient, and paraphrases each edit (Monte-Carlo samples). The beam for the next step is chosen
from beam + new candidates by a UCB bandit that spends its forward passes on minibatches of the
train set rather than scoring every candidate on all of it.

On a generative task a failure is an example whose metric value on the prompt's greedy answer is below 1
(for a graded metric where none is perfect: below the chunk's best), and the critique sees its input, the
expected output and the output the task model produced, as ProTeGi shows the label and the prediction.
The bandit's pulls rank on the target likelihood in-process (cheap), on the metric with a task endpoint.
"""

from __future__ import annotations

import math
import random
from typing import ClassVar

from pydantic import Field

from .base import RunContext, register
from .family.llm import (
    PARAPHRASE,
    LLMPromptSearch,
    LLMSearchConfig,
    example_input,
    example_lines,
    extract_instructions,
)

GRADIENT = """I'm trying to write a zero-shot {what}.

My current prompt is:
"{prompt}"

But this prompt gets the following examples wrong:
{errors}

Give a reason why the prompt could have gotten these examples wrong."""

EDIT = """I'm trying to write a zero-shot {what}.

My current prompt is:
"{prompt}"

But it gets the following examples wrong:
{errors}

Based on these examples the problem with this prompt is that {gradient}

Based on the above information, write an improved prompt. Wrap it with <START> and <END>."""

class APOConfig(LLMSearchConfig):
    beam: int = Field(2, ge=1, description="prompts kept per step")
    minibatch: int = Field(8, ge=1, description="train examples a prompt's errors are drawn from")
    errors_per_gradient: int = Field(3, ge=1)
    n_gradients: int = Field(1, ge=1, description="critiques per beam prompt per step")
    mc_samples: int = Field(1, ge=0, description="paraphrases of each edited prompt")
    eval_rounds: int = Field(6, ge=1, description="UCB rounds per step")
    prompts_per_round: int = Field(2, ge=1, description="candidates pulled per UCB round")
    samples_per_eval: int = Field(8, ge=1, description="train examples per pull")
    c: float = Field(1.0, ge=0.0, description="UCB exploration constant")


@register
class APO(LLMPromptSearch):
    name = "apo"
    description = "ProTeGi: textual gradients from the errors, LLM edits and paraphrases, beam search with UCB."
    Config = APOConfig
    generative: ClassVar[bool] = True

    def search(self, ctx: RunContext) -> None:
        cfg: APOConfig = self.config  # type: ignore[assignment]
        rng = random.Random(ctx.seed)
        train = ctx.data.train
        self.chunks = [train[i : i + cfg.samples_per_eval] for i in range(0, len(train), cfg.samples_per_eval)]
        self.chunk_scorers: dict = {}
        self.chunk_metric_scorers: dict = {}
        what = "prompt for a task whose answers are text" if ctx.task.is_generative else "classifier prompt"
        beam = [self.base.instruction]
        for step in range(cfg.iterations):
            new, origins = [], []
            for parent in beam:
                errors = self.errors(parent, rng, cfg)
                if not errors:
                    continue
                for gradient in self.ask([GRADIENT.format(what=what, prompt=parent, errors=errors)] * cfg.n_gradients,
                                         "gradient")[: cfg.n_gradients]:
                    gradient = gradient[0].strip()
                    for edit_answer in self.ask([EDIT.format(what=what, prompt=parent, errors=errors,
                                                             gradient=gradient)], "edit"):
                        for child in extract_instructions(edit_answer[0])[:1]:
                            new.append(child)
                            origins.append({"op": "edit", "step": step, "parents": [parent], "critique": gradient,
                                            "errors": errors})
                            if cfg.mc_samples:
                                for para in self.ask([PARAPHRASE.format(prompt=child)], "paraphrase", n=cfg.mc_samples):
                                    for text in para:
                                        for p in extract_instructions(text)[:1]:
                                            new.append(p)
                                            origins.append({"op": "paraphrase", "step": step, "parents": [child],
                                                            "critique": gradient, "errors": errors})
            candidates = list(dict.fromkeys(beam + [t for t in new if t not in beam]))
            self.record_new(new, origins)
            beam = self.ucb_select(candidates, cfg.beam, rng, cfg)
            if self.out_of_budget:
                break

    def record_new(self, texts: list[str], origins: list[dict]) -> None:
        """Every new candidate is scored on the full train set once (the trace and the dev pick need
        it); the bandit's minibatch pulls decide the beam."""
        seen, keep_t, keep_o = set(), [], []
        for t, o in zip(texts, origins, strict=True):
            if t not in seen:
                seen.add(t)
                keep_t.append(t)
                keep_o.append(o)
        self.score_instructions(keep_t, keep_o)

    def errors(self, instruction: str, rng: random.Random, cfg: APOConfig) -> str:
        """A few examples the prompt gets wrong on a random chunk of train, as text for the LLM."""
        j = rng.randrange(len(self.chunks))
        if self.ctx.task.is_generative:
            return self.generative_errors(instruction, j, rng, cfg)
        scores = self.chunk_scorer(j).score([self.prompt(instruction)])
        if not scores:
            return ""
        wrong = [i for i, (s, g) in enumerate(zip(scores[0].argmax(1).tolist(),
                                                   self.chunk_scorer(j).golds.tolist(), strict=True)) if s != g]
        if not wrong:
            return ""
        picked = [self.chunks[j][i] for i in rng.sample(wrong, min(cfg.errors_per_gradient, len(wrong)))]
        return "\n".join(example_lines(self.ctx, picked))

    def generative_errors(self, instruction: str, j: int, rng: random.Random, cfg: APOConfig) -> str:
        """The failures of the prompt's answers on chunk `j` by the task's metric: each one's input, expected
        output and produced output."""
        scorer = self.chunk_metric_scorer(j)
        prompt = self.prompt(instruction)
        scores = scorer.score([prompt])
        if not scores:
            return ""
        wrong = failures(scorer.per_example(scores[0]).tolist())
        if not wrong:
            return ""
        produced = scorer.outputs(prompt)
        lines = []
        for i in rng.sample(wrong, min(cfg.errors_per_gradient, len(wrong))):
            ex, answer = self.chunks[j][i], produced[i].strip() or "(nothing)"
            lines.append(f"Input: {example_input(self.ctx, ex)}\nExpected output: "
                         f"{self.ctx.task.target_text(ex).strip()}\nProduced output: {answer}")
        return "\n\n".join(lines)

    def chunk_metric_scorer(self, j: int):
        """The metric on chunk `j` (the ranking scorer itself when it is the metric: a task endpoint)."""
        ranking = self.chunk_scorer(j)
        if getattr(ranking, "kind", None) == "metric":
            return ranking
        if j not in self.chunk_metric_scorers:
            self.chunk_metric_scorers[j] = self.make_scorer(self.chunks[j], f"train-chunk{j}", confirm=True)
        return self.chunk_metric_scorers[j]

    def chunk_scorer(self, j: int):
        if j not in self.chunk_scorers:
            self.chunk_scorers[j] = self.make_scorer(self.chunks[j], f"train-chunk{j}")
        return self.chunk_scorers[j]

    def ucb_select(self, candidates: list[str], k: int, rng: random.Random, cfg: APOConfig) -> list[str]:
        """UCB bandit (ProTeGi's best selector): each round pulls the candidates with the highest upper
        bound on a chunk of train they have not been scored on; the top-`k` means are the new beam."""
        seen: dict[str, set[int]] = {c: set() for c in candidates}
        total: dict[str, float] = {c: 0.0 for c in candidates}
        for t in range(1, cfg.eval_rounds + 1):
            def ucb(c: str, t: int = t) -> float:
                n = len(seen[c])
                if n == 0:
                    return float("inf")
                if n == len(self.chunks):
                    return total[c] / n  # exact: nothing left to learn
                return total[c] / n + cfg.c * math.sqrt(math.log(t) / n)

            pulls = [c for c in sorted(candidates, key=ucb, reverse=True) if len(seen[c]) < len(self.chunks)]
            for c in pulls[: cfg.prompts_per_round]:
                j = rng.choice([j for j in range(len(self.chunks)) if j not in seen[c]])
                scores = self.chunk_scorer(j).score([self.prompt(c)])
                if not scores:
                    return sorted(candidates, key=lambda c: -(total[c] / max(1, len(seen[c]))))[:k]
                seen[c].add(j)
                total[c] += self.chunk_scorer(j).fitness(scores[0])
            self.state.round_done()
        return sorted(candidates, key=lambda c: -(total[c] / len(seen[c]) if seen[c] else -1.0))[:k]


def failures(values: list[float]) -> list[int]:
    """The examples a generative prompt fails: metric below 1, or (a graded metric where none is perfect and
    the values differ) below the best of them."""
    wrong = [i for i, v in enumerate(values) if v < 1.0]
    if len(wrong) == len(values) and len(set(values)) > 1:
        wrong = [i for i, v in enumerate(values) if v < max(values)]
    return wrong

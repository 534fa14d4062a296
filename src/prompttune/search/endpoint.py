"""Scoring hard prompts with a task model behind an OpenAI-compatible endpoint (black box: text in,
text out), as the APO/OPRO papers score with hosted models.

Classification (`EndpointScorer`): each example is rendered with the candidate template and sent as one
chat message (temperature 0); the answer is read as the class whose label word appears first in it. Each
(prompt, example) is one query of the search budget, memoised like the engine's answers, so resume and
reruns (with the response cache) cost nothing. Generative tasks (`GenerativeEndpointScorer`): the task's metric on the
endpoint's answers, cut at the task's stop strings, one query per example likewise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import torch

from ..generative import GenerationSetup
from ..llm import LLM, ChatRequest, LLMBudgetExhausted
from ..models.causal_lm import cut_at_stop
from ..prompts.hard import HardPrompt
from ..tasks import Example, Task
from .state import SearchState

NO_ANSWER = float("-inf")


class EndpointScorer:
    """Same interface as `CandidateScorer` (score, fitness, golds, len); scores are 0 for the class
    the answer names and -inf elsewhere (all -inf when it names none: always wrong)."""

    def __init__(self, llm: LLM, task: Task, examples: Sequence[Example], state: SearchState, name: str,
                 max_tokens: int = 8):
        self.llm = llm
        self.task = task
        self.examples = list(examples)
        self.golds = torch.tensor([task.label_index(ex) for ex in self.examples], dtype=torch.long)
        self.state = state
        self.name = f"endpoint-{name}"
        self.max_tokens = max_tokens
        words = [[w.strip().lower() for w in ws] for ws in task.words()]
        self.patterns = [re.compile(r"\b(" + "|".join(re.escape(w) for w in ws if w) + r")\b") for ws in words]

    def __len__(self) -> int:
        return len(self.examples)

    def read(self, answer: str) -> int | None:
        """The class whose label word comes first in the answer, or None."""
        hits = [(m.start(), c) for c, p in enumerate(self.patterns) if (m := p.search(answer.lower()))]
        return min(hits)[1] if hits else None

    def score(self, prompts: Sequence[HardPrompt | str]) -> list[torch.Tensor]:
        out = []
        for p in prompts:
            template = p.template if isinstance(p, HardPrompt) else p
            key = f"{self.name}:{template}"
            if not self.state.charge(key, len(self)):
                break
            hit = self.state.cached(key)
            if hit is None:
                requests = [ChatRequest.of(template.format_map(ex.fields), temperature=0.0,
                                           max_tokens=self.max_tokens) for ex in self.examples]
                answers = [c.texts[0] for c in self.llm.chat_many(requests, purpose="task")]
                scores = torch.full((len(self), len(self.patterns)), NO_ANSWER)
                for i, answer in enumerate(answers):
                    cls = self.read(answer)
                    if cls is not None:
                        scores[i, cls] = 0.0
                hit = self.state.remember(key, scores)
            out.append(hit)
        return out

    def fitness(self, scores: torch.Tensor) -> float:
        return float(self.per_example(scores).mean())

    def per_example(self, scores: torch.Tensor) -> torch.Tensor:
        """(n,) 1.0 where the answer names the gold class, else 0.0 (an answer naming no class is wrong)."""
        answered = torch.isfinite(scores).any(1)
        return ((scores.argmax(1) == self.golds) & answered).float()


class GenerativeEndpointScorer:
    """A generative task's primary metric on the endpoint's answers: the interface of `MetricScorer` (score,
    fitness, per_example, outputs, worst_case). Per prompt (n, 2): each example's metric value and the
    queries it took (1).

    Each example is rendered with the candidate template and sent as one chat message (temperature 0,
    `max_tokens` = the task's `max_new_tokens`); the answer, its leading whitespace dropped (a chat answer
    starts a message of its own, not the template's continuation), is cut at the task's first stop string
    and scored against the acceptable answers. Each (prompt, example) is one query of the search budget,
    whatever the answer's length: the endpoint's cost is its calls, not our forward passes."""

    golds = None  # no label indices: per-example figures come from `per_example`
    kind = "metric"

    def __init__(self, llm: LLM, task: Task, examples: Sequence[Example], state: SearchState | None, name: str):
        self.llm = llm
        self.task = task
        self.examples = list(examples)
        self.state = state
        self.name = f"endpoint-{name}-gen"
        self.setup = GenerationSetup.of_task(task)
        self.primary = self.setup.primary
        self.answers = [list(ex.answers) for ex in self.examples]
        self._outputs: dict[str, list[str]] = {}
        self.fitness_name = f"{self.primary} on the endpoint's answers"  # what a search's trace says it ranks by

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def worst_case(self) -> int:
        """The queries scoring one prompt takes."""
        return len(self)

    def render(self, template: str) -> list[str]:
        return [template.format_map(ex.fields) for ex in self.examples]

    def score(self, prompts: Sequence[HardPrompt | str]) -> list[torch.Tensor]:
        """Per prompt (in order, as many as the budget pays for: one query per example)."""
        out = []
        for p in prompts:
            template = p.template if isinstance(p, HardPrompt) else p
            key = f"{self.name}:{template}"
            if self.state is not None and not self.state.charge(key, len(self)):
                break
            hit = self.state.cached(key) if self.state is not None else None
            if hit is None:
                outs = self._ask(template)
                values = [self.metric(o, a) for o, a in zip(outs, self.answers, strict=True)]
                hit = torch.tensor([values, [1.0] * len(outs)], dtype=torch.float32).T.contiguous()
                if self.state is not None:
                    hit = self.state.remember(key, hit)
                    # the answers too: a resumed run's critique (ProTeGi) reads them without asking again
                    self.state.remember(f"{key}:answers", torch.tensor(list(json.dumps(outs).encode()),
                                                                       dtype=torch.uint8))
            out.append(hit)
        return out

    def fitness(self, scores: torch.Tensor) -> float:
        """The primary metric's mean over the examples."""
        return float(scores[:, 0].mean())

    def per_example(self, scores: torch.Tensor) -> torch.Tensor:
        return scores[:, 0]

    def outputs(self, prompt: HardPrompt | str) -> list[str]:
        """The endpoint's answers behind `prompt`, cut as scored (from the search checkpoint in a resumed run;
        asked only for a prompt never scored)."""
        template = prompt.template if isinstance(prompt, HardPrompt) else prompt
        saved = self.state.cached(f"{self.name}:{template}:answers") if self.state is not None else None
        if template not in self._outputs and saved is not None:
            self._outputs[template] = json.loads(bytes(saved.tolist()).decode())
        if template not in self._outputs:
            self._ask(template)
        return self._outputs[template]

    def metric(self, output: str, answers: Sequence[str]) -> float:
        return next(fn(output, list(answers)) for name, fn in self.setup.metrics if name == self.primary)

    def cut(self, text: str) -> str:
        """The answer up to the task's first stop string (the backbone's rule), leading blanks dropped."""
        return cut_at_stop(text.lstrip(), self.setup.stop)

    def _ask(self, template: str) -> list[str]:
        requests = [ChatRequest.of(text, temperature=0.0, max_tokens=self.setup.max_new_tokens)
                    for text in self.render(template)]
        done = self.llm.chat_many(requests, purpose="task")
        if len(done) < len(requests):
            raise LLMBudgetExhausted(self.llm.budget_message())
        self._outputs[template] = [self.cut(c.texts[0]) for c in done]
        return self._outputs[template]

"""Scoring hard prompts with a task model behind an OpenAI-compatible endpoint (black box: text in,
text out), as the APO/OPRO papers score with hosted models.

Each example is rendered with the candidate template and sent as one chat message (temperature 0);
the answer is read as the class whose label word appears first in it. Each (prompt, example) is one
query of the search budget, memoised like the engine's answers, so resume and reruns (with the
response cache) cost nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from ..llm import LLM, ChatRequest
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
        answered = torch.isfinite(scores).any(1)
        return float(((scores.argmax(1) == self.golds) & answered).float().mean())

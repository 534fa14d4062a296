"""Scoring hard prompts on a generative task (the answer is text), the two fitnesses every search uses there.

* **Likelihood** (`LikelihoodScorer`): the target's negative log-likelihood teacher-forced behind each
  candidate, cheap and smooth, for ranking many candidates. The token prefix every example shares under
  one candidate (its instruction, its demonstrations, the template's head) runs once per candidate, as a
  key/value prefix every example attends to (`backbone.target_nll` with the prefix's embeddings as the
  shared prompt, the packed fast path); then only each example's own tokens and its target run.
* **Metric** (`MetricScorer`): the task's primary metric on greedy generations, batched across candidates
  and examples, to confirm a short list and to pick on dev. The held-out figure of a result is always this.

Both charge a `SearchState` in one unit, forward passes: teacher-forcing one prompt's target on one example
is one pass (all its target tokens go through together); generating an answer costs one pass per generated
token (the stop token included, `max_new_tokens` at most). A metric round is checked against its worst case
(`max_new_tokens` passes per example) before it runs, then charged what it generated, so a search never
spends past its budget. Answers are memoised by key, so a resumed search replays them free.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..generative import GenerationSetup, target_ids
from ..prompts.hard import HardPrompt, split_template
from ..tasks import Example, Task
from .engine import common_prefix, hidden_with_triggers
from .state import SearchState


def template_of(prompt: HardPrompt | str) -> str:
    return prompt.template if isinstance(prompt, HardPrompt) else prompt


class GenerativeScorer:
    """What both fitnesses share: the examples, their targets and answers, rendering, the budget."""

    golds = None  # no label indices: per-example figures come from `per_example`

    def __init__(self, backbone, task: Task, examples: Sequence[Example], state: SearchState | None = None,
                 name: str = "examples"):
        self.backbone = backbone
        self.task = task
        self.examples = list(examples)
        self.state = state
        self.name = name
        self.setup = GenerationSetup.of_task(task)
        self.answers = [list(ex.answers) for ex in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def render(self, template: str) -> list[str]:
        return [template.format_map(ex.fields) for ex in self.examples]

    def fitness(self, scores: torch.Tensor) -> float:
        raise NotImplementedError

    def per_example(self, scores: torch.Tensor) -> torch.Tensor:
        """(n,) one figure per example, higher is better (for sign tests between two prompts)."""
        raise NotImplementedError


class LikelihoodScorer(GenerativeScorer):
    """(n, 2) per prompt: each example's summed target NLL and its number of target tokens."""

    kind = "likelihood"

    def __init__(self, backbone, task: Task, examples: Sequence[Example], state: SearchState | None = None,
                 name: str = "examples", chunk: int = 64):
        super().__init__(backbone, task, examples, state, f"{name}-nll")
        self.chunk = chunk
        self.target_ids = [target_ids(backbone, task.target_text(ex), self.setup.stop) for ex in self.examples]

    def score(self, prompts: Sequence[HardPrompt | str]) -> list[torch.Tensor]:
        """Per prompt (in order, as many as the budget pays for: one pass per example)."""
        out = []
        for prompt in prompts:
            template = template_of(prompt)
            key = f"{self.name}:{template}"
            if self.state is None:
                out.append(self._nll(template))
                continue
            got = self.state.lookup(key, len(self), lambda t=template: self._nll(t))
            if got is None:
                break
            out.append(got)
        return out

    def fitness(self, scores: torch.Tensor) -> float:
        """Minus the NLL per target token (higher is better)."""
        return -float(scores[:, 0].sum() / scores[:, 1].sum().clamp(min=1))

    def per_example(self, scores: torch.Tensor) -> torch.Tensor:
        return -scores[:, 0] / scores[:, 1].clamp(min=1)

    @torch.inference_mode()
    def _nll(self, template: str) -> torch.Tensor:
        bb = self.backbone
        reserve = max(map(len, self.target_ids), default=0)
        ids = bb.tokenize(self.render(template), reserve=reserve)
        shared = min(len(x) for x in ids) - 1  # every example keeps at least one token of its own
        for x in ids[1:]:
            shared = min(shared, common_prefix(ids[0], x))
        prefix = bb.embed(torch.tensor(ids[0][:shared])) if shared > 0 else None
        rest = [x[shared:] for x in ids]
        nll = torch.cat([
            bb.target_nll(rest[i : i + self.chunk], self.target_ids[i : i + self.chunk], prefix).float().cpu()
            for i in range(0, len(rest), self.chunk)
        ])
        tokens = torch.tensor([len(t) for t in self.target_ids], dtype=torch.float32)
        return torch.stack([nll, tokens], 1)

    # ------------------------------------------------------------------ gradients (AutoPrompt)
    def trigger_gradient(self, triggers: Sequence[int], indices: Sequence[int]) -> torch.Tensor:
        """d(target NLL per token)/d(trigger embeddings), (n_triggers, hidden), with the trigger tokens right
        after the input of each example in `indices` (before the answer cue), the targets teacher-forced
        after the cue: `CandidateScorer.trigger_gradient` for text answers. One right-padded pass with the
        triggers as embeddings; head and cue are tokenized apart, which may differ from the rendered text
        at the seams, but the gradient only ranks candidates (the likelihood fitness scores them exactly)."""
        bb = self.backbone
        head, tail = split_template(self.task.spec.template)
        heads = bb.tokenize([head.format_map(self.examples[i].fields) for i in indices])
        cue = bb.tokenizer(tail, add_special_tokens=False)["input_ids"]
        targets = [self.target_ids[i] for i in indices]
        seqs = bb.fit([h + [-1] * len(triggers) + cue for h in heads], max(map(len, targets)))  # ends kept
        trig, hidden = hidden_with_triggers(bb, [s + t[:-1] for s, t in zip(seqs, targets, strict=True)], triggers)
        row = torch.tensor([r for r, t in enumerate(targets) for _ in t])
        col = torch.tensor([len(s) - 1 + k for s, t in zip(seqs, targets, strict=True) for k in range(len(t))])
        gold = torch.tensor([y for t in targets for y in t], device=bb.device)
        F.cross_entropy(bb._logits(hidden[row.to(bb.device), col.to(bb.device)]), gold).backward()
        return trig.grad.detach().float().cpu()


class MetricScorer(GenerativeScorer):
    """(n, 2) per prompt: each example's primary-metric value on its greedy answer, and the passes generating
    it took. `outputs(prompt)` gives the answers themselves (what ProTeGi's critique reads)."""

    kind = "metric"

    def __init__(self, backbone, task: Task, examples: Sequence[Example], state: SearchState | None = None,
                 name: str = "examples", batch_size: int = 32):
        super().__init__(backbone, task, examples, state, f"{name}-gen")
        self.batch_size = batch_size
        self.primary = self.setup.primary
        self._outputs: dict[str, list[str]] = {}

    @property
    def worst_case(self) -> int:
        """The most passes generating answers for one prompt can take."""
        return len(self) * self.setup.max_new_tokens

    def score(self, prompts: Sequence[HardPrompt | str]) -> list[torch.Tensor]:
        """Per prompt (in order, as many as the budget pays for); the new ones generated in one batched call."""
        templates = [template_of(p) for p in prompts]
        out: list[torch.Tensor | None] = []
        todo: list[int] = []
        room = self.state.remaining() if self.state is not None else float("inf")
        for t in templates:
            hit = self.state.cached(self._key(t)) if self.state is not None else None
            if hit is not None and self._key(t) in self.state.charged:  # asked before in this run: free
                out.append(hit)
                continue
            # admitted against its worst case whether it is new or replayed from a resumed run's memo, so a
            # resumed search admits exactly what the uninterrupted one did; charged what it took, below
            if self.worst_case > room:
                break
            room -= self.worst_case
            if hit is not None:
                out.append(hit)
                continue
            todo.append(len(out))
            out.append(None)
        if self.state is not None and len(out) < len(templates):
            self.state.exhausted = True
        for i, row in zip(todo, self._generate([templates[i] for i in todo]), strict=True):
            out[i] = self.state.remember(self._key(templates[i]), row) if self.state is not None else row
        if self.state is not None:
            for t, row in zip(templates, out, strict=False):
                self.state.charge(self._key(t), int(row[:, 1].sum()))
        return out  # type: ignore[return-value]

    def fitness(self, scores: torch.Tensor) -> float:
        """The primary metric's mean over the examples."""
        return float(scores[:, 0].mean())

    def per_example(self, scores: torch.Tensor) -> torch.Tensor:
        return scores[:, 0]

    def outputs(self, prompt: HardPrompt | str) -> list[str]:
        """The greedy answers behind `prompt` (generated again, free, when a resumed run has only its scores:
        greedy decoding gives the same text)."""
        template = template_of(prompt)
        if template not in self._outputs:
            self._generate([template])
        return self._outputs[template]

    def _key(self, template: str) -> str:
        return f"{self.name}:{template}"

    @torch.inference_mode()
    def _generate(self, templates: list[str]) -> list[torch.Tensor]:
        if not templates:
            return []
        bb, n = self.backbone, len(self)
        texts = [text for t in templates for text in self.render(t)]
        steps: list[int] = []
        answers = bb.generate(texts, None, max_new_tokens=self.setup.max_new_tokens, stop=self.setup.stop,
                              batch_size=self.batch_size, lengths=steps)
        rows = []
        for j, t in enumerate(templates):
            outs = answers[j * n : (j + 1) * n]
            self._outputs[t] = outs
            values = [fn(out, ans) for out, ans in zip(outs, self.answers, strict=True)
                      for name, fn in self.setup.metrics if name == self.primary]
            passes = steps[j * n : (j + 1) * n]  # the decoding steps each answer took
            rows.append(torch.tensor([values, passes], dtype=torch.float32).T.contiguous())
        return rows

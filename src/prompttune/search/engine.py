"""Scoring many hard prompts on the same examples, fast because candidates share most of their tokens.

Every candidate is a template, rendered and tokenized exactly as at inference, so a score here is
the score the found prompt gets later. Two ways to share work, both exact:

* **Candidate after the input** (separators, trigger tokens, RLPrompt): each example's tokens up to
  the end of its input are run once, and their keys/values kept. A candidate then costs only its
  own tokens and the answer cue, which attend to the cached example (the longest common token
  prefix of the candidate's tokenization and the cached one is reused, so a tokenizer merging
  across the boundary is still exact). Many (candidate, example) rows go in one forward pass.
* **Candidate before the input** (instructions, any template): the token prefix common to all
  examples is run once per candidate and every example attends to it (`backbone.score`'s shared
  prompt prefix), with the examples packed without padding.

Only the answer position is scored, and only against the label words (full log-softmax only where
a label word has several tokens). The hand-built masks of the first way carry each layer type's
window (`backbone.attention`); a model they cannot describe exactly scores every candidate the
second way, which `backbone.score` then runs on its padded path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from ..models import CausalLMBackbone, LabelWords
from ..models.attention import move_masks, output_cache
from ..models.packing import causal_allowed
from ..models.scoring import class_scores
from ..prompts.hard import HardPrompt, split_template
from ..tasks import Example, Task
from .state import SearchState


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def fitness(scores: torch.Tensor, golds: torch.Tensor) -> float:
    """Accuracy, ties broken by cross-entropy (which moves the value by less than one example)."""
    acc = float((scores.argmax(1) == golds).float().mean())
    ce = float(F.cross_entropy(scores.float(), golds))
    return acc - min(ce, 10.0) / 1000.0


class CandidateScorer:
    """Class scores of hard prompts on one fixed set of examples, charged to a `SearchState`."""

    def __init__(
        self,
        backbone: CausalLMBackbone,
        task: Task,
        labels: LabelWords,
        examples: Sequence[Example],
        state: SearchState | None = None,
        name: str = "examples",
        max_rows: int = 128,
    ):
        self.backbone = backbone
        self.task = task
        self.labels = labels
        self.examples = list(examples)
        self.golds = torch.tensor([task.label_index(ex) for ex in self.examples], dtype=torch.long)
        self.state = state
        self.name = name
        self.max_rows = max_rows
        self.base_head, self.base_tail = split_template(task.spec.template)
        self._head_ids: list[list[int]] | None = None
        self._head_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.examples)

    def render(self, template: str) -> list[str]:
        return [template.format_map(ex.fields) for ex in self.examples]

    # ------------------------------------------------------------------ public
    def score(self, prompts: Sequence[HardPrompt | str]) -> list[torch.Tensor]:
        """(n_examples, classes) scores per prompt, for as many prompts (in order) as the budget pays for."""
        templates = [p.template if isinstance(p, HardPrompt) else p for p in prompts]
        out: list[torch.Tensor | None] = []
        todo: list[int] = []
        for t in templates:
            key = f"{self.name}:{t}"
            if self.state is not None:
                if not self.state.charge(key, len(self)):
                    break
                hit = self.state.cached(key)
                if hit is not None:
                    out.append(hit)
                    continue
            todo.append(len(out))
            out.append(None)
        after_input = [i for i in todo if templates[i].startswith(self.base_head) and self.base_head
                       and self.backbone.attention.packable]
        for i, scores in zip(after_input, self._score_after_input([templates[i] for i in after_input]), strict=True):
            out[i] = scores
        for i in todo:
            if out[i] is None:
                out[i] = self._score_before_input(templates[i])
        if self.state is not None:
            for i in todo:
                out[i] = self.state.remember(f"{self.name}:{templates[i]}", out[i])
        return out  # type: ignore[return-value]

    def fitness(self, scores: torch.Tensor) -> float:
        return fitness(scores, self.golds)

    def per_example(self, scores: torch.Tensor) -> torch.Tensor:
        """(n,) 1.0 where the prompt's answer is right, else 0.0 (what sign tests between two prompts compare,
        as the generative scorers' per-example metric)."""
        return (scores.argmax(1) == self.golds).float()

    # ------------------------------------------------------------------ candidate before the input
    @torch.inference_mode()
    def _score_before_input(self, template: str, chunk: int = 64) -> torch.Tensor:
        bb = self.backbone
        ids = bb.tokenize(self.render(template), reserve=self.labels.answer_tokens)
        shared = min(len(x) for x in ids) - 1
        for x in ids[1:]:
            shared = min(shared, common_prefix(ids[0], x))
        prefix = bb.embed(torch.tensor(ids[0][:shared])) if shared > 0 else None
        rest = [x[shared:] for x in ids]
        return torch.cat(
            [
                bb.score(rest[i : i + chunk], self.labels, prefix, max_row_tokens=512).float().cpu()
                for i in range(0, len(rest), chunk)
            ]
        )

    # ------------------------------------------------------------------ candidate after the input
    def _head_token_ids(self) -> list[list[int]]:
        if self._head_ids is None:
            self._head_ids = self.backbone.tokenize([self.base_head.format_map(ex.fields) for ex in self.examples])
        return self._head_ids

    @torch.inference_mode()
    def _cache_heads(self) -> None:
        """Run every example up to the end of its input once; keep its per-layer keys/values (right-padded,
        every layer all of them: the masks of `_forward_rows` apply any sliding window)."""
        bb = self.backbone
        heads = self._head_token_ids()
        longest = max(map(len, heads))
        positions = torch.arange(longest)[None]
        layers: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        for i in range(0, len(self), 32):
            chunk = heads[i : i + 32]
            ids = torch.full((len(chunk), longest), bb.tokenizer.pad_token_id, dtype=torch.long)
            real = torch.zeros(len(chunk), longest, dtype=torch.bool)
            for r, x in enumerate(chunk):
                ids[r, : len(x)] = torch.tensor(x)
                real[r, : len(x)] = True
            at = positions.expand(len(chunk), -1)
            masks = bb.attention.masks(causal_allowed(real), at, at, bb.dtype)
            out = bb._forward(DynamicCache(), input_ids=ids.to(bb.device), attention_mask=move_masks(masks, bb.device),
                              position_ids=at.to(bb.device), use_cache=True)
            layers.append([(layer.keys, layer.values) for layer in output_cache(out).layers])
        self._head_kv = [
            (torch.cat([c[n][0] for c in layers]), torch.cat([c[n][1] for c in layers])) for n in range(len(layers[0]))
        ]

    @torch.inference_mode()
    def _score_after_input(self, templates: list[str]) -> list[torch.Tensor]:
        if not templates:
            return []
        if self._head_kv is None:
            self._cache_heads()
        bb, n = self.backbone, len(self)
        texts = [t for tmpl in templates for t in self.render(tmpl)]
        full = bb.tokenize(texts, reserve=self.labels.answer_tokens)
        flat = self.labels.flat
        multi = self.labels.needs_full_softmax
        # One main row per (candidate, example); with multi-token words also one branch row per such word,
        # which carries the word's leading tokens after the answer cue.
        rows: list[tuple[int, int, list[int], int]] = []  # (example, reused cache length, tokens, word or -1)
        for j, ids in enumerate(full):
            e = j % n
            keep = min(common_prefix(ids, self._head_ids[e]), len(ids) - 1)
            rest = ids[keep:]
            rows.append((e, keep, rest, -1))
            rows.extend((e, keep, rest + list(w[:-1]), w_idx) for w_idx, w in enumerate(flat) if len(w) > 1)
        main, branch = [], []
        for start in range(0, len(rows), self.max_rows):
            m, b = self._forward_rows(rows[start : start + self.max_rows], multi)
            main.append(m)
            branch.extend(b)
        words = torch.cat(main)  # (candidates x examples, words): first-token logits or log-probs
        if branch:
            per_main = len(branch) // len(words)
            multi_idx = [w_idx for w_idx, w in enumerate(flat) if len(w) > 1]
            words[:, multi_idx] += torch.tensor(branch).view(len(words), per_main)
        return [class_scores(s, self.labels) for s in words.view(len(templates), n, len(flat))]

    def _forward_rows(
        self, rows: list[tuple[int, int, list[int], int]], multi: bool
    ) -> tuple[torch.Tensor, list[float]]:
        """Main rows' word scores at the answer position, and each branch row's continuation log-prob."""
        bb = self.backbone
        n_rows, width = len(rows), max(len(r[2]) for r in rows)
        cached = self._head_kv[0][0].shape[2]
        ids = torch.full((n_rows, width), bb.tokenizer.pad_token_id, dtype=torch.long)
        real = torch.zeros(n_rows, width, dtype=torch.bool)
        keep = torch.tensor([r[1] for r in rows])
        for i, (_, _, toks, _) in enumerate(rows):
            ids[i, : len(toks)] = torch.tensor(toks)
            real[i, : len(toks)] = True
        example = torch.tensor([r[0] for r in rows], device=bb.device)
        cache = DynamicCache(  # no config: every layer keeps the whole head; the masks apply windows
            ddp_cache_data=[(k.index_select(0, example), v.index_select(0, example)) for k, v in self._head_kv],
        )
        sees_cache = torch.arange(cached)[None, :] < keep[:, None]  # (R, cached)
        allowed = torch.cat([sees_cache[:, None, :].expand(-1, width, -1), causal_allowed(real)], 2)
        positions = keep[:, None] + torch.arange(width)[None, :]
        keys = torch.cat([torch.arange(cached).expand(n_rows, -1), positions], 1)  # cached head: index = position
        masks = bb.attention.masks(allowed, positions, keys, bb.dtype)
        hidden = bb._forward(
            cache, input_ids=ids.to(bb.device), attention_mask=move_masks(masks, bb.device),
            position_ids=positions.to(bb.device), use_cache=False,
        ).last_hidden_state
        flat = self.labels.flat
        main_rows = [i for i, r in enumerate(rows) if r[3] < 0]
        answer = hidden[main_rows, real[main_rows].sum(1) - 1]
        if multi:
            firsts = torch.tensor([w[0] for w in flat], device=bb.device)
            main = torch.log_softmax(bb._logits(answer), -1)[:, firsts].float().cpu()
        else:
            main = bb._logits(answer, torch.tensor([w[0] for w in flat], device=bb.device)).float().cpu()
        branch = []
        for i, (_, _, toks, w_idx) in enumerate(rows):
            if w_idx >= 0:
                word = flat[w_idx]
                first = len(toks) - len(word) + 1  # the answer position predicts word[0]; these predict the rest
                lp = torch.log_softmax(bb._logits(hidden[i, first : first + len(word) - 1]), -1)
                branch.append(float(lp.gather(1, torch.tensor(word[1:], device=lp.device)[:, None]).sum()))
        return main, branch

    # ------------------------------------------------------------------ gradients (AutoPrompt)
    def trigger_gradient(self, triggers: Sequence[int], indices: Sequence[int]) -> torch.Tensor:
        """d(cross-entropy)/d(trigger embeddings), (n_triggers, hidden), with the trigger tokens right after
        the input of each example in `indices` (first-token label scores: the gradient only ranks candidates)."""
        bb = self.backbone
        heads = self._head_token_ids()
        tail = bb.tokenizer(self.base_tail, add_special_tokens=False)["input_ids"]
        seqs = bb.fit([heads[i] + [-1] * len(triggers) + tail for i in indices])  # ends kept: triggers, cue
        trig, hidden = hidden_with_triggers(bb, seqs, triggers)
        answer = hidden[torch.arange(len(seqs)), torch.tensor([len(s) - 1 for s in seqs])]
        word_rows = torch.tensor([w[0] for w in self.labels.flat], device=bb.device)
        scores = class_scores(bb._logits(answer, word_rows), self.labels)
        F.cross_entropy(scores, self.golds[list(indices)].to(scores.device)).backward()
        return trig.grad.detach().float().cpu()


def hidden_with_triggers(backbone, rows: Sequence[Sequence[int]], triggers: Sequence[int]) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """(trigger embeddings with requires_grad, last hidden states (rows, width, hidden)) of token `rows` whose -1
    slots take the triggers in order (the k-th slot of a row takes trigger k), right-padded, one pass: what
    AutoPrompt's gradient flows back through, for label scores and for target likelihoods alike."""
    bb = backbone
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), bb.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(list(row))
        mask[r, : len(row)] = 1
    slot = ids < 0
    trig = bb.embed(torch.tensor(list(triggers))).detach().requires_grad_(True)
    embeds = bb.embed(ids.clamp(min=0)).detach()
    order = (slot.cumsum(1) - 1).clamp(min=0)
    embeds = torch.where(slot[..., None].to(bb.device), trig[order.to(bb.device)], embeds)
    return trig, bb.decoder(inputs_embeds=embeds, attention_mask=mask.to(bb.device)).last_hidden_state

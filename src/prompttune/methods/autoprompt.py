"""AutoPrompt (Shin et al., 2020): trigger tokens after the input, found by gradient-guided search.

Each iteration takes the gradient of the loss w.r.t. one trigger's embedding (on a batch of train
examples), ranks every readable vocabulary token by the first-order change it would make
(HotFlip: -e_v . grad), re-scores the top `n_candidates` replacements exactly on train, batched with
cached example prefixes, and keeps the best if it improves. Optionally the label words are found
first (`label_search`): a logistic regression on the answer-position hidden states, whose class
weights pick each class's word by dot product with the output embeddings (the paper's method).

On a generative task (the answer is text) the loss is the target's negative log-likelihood with the
triggers in place (`LikelihoodScorer.trigger_gradient`), candidates are re-scored by that likelihood on
train, and the finalists are confirmed on dev by the task's metric on greedy generations (the
`HardPromptSearch` scorers); `label_search` has no label words to find there and is refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..errors import ConfigError
from ..prompts.hard import HardPrompt
from ..search.engine import CandidateScorer
from ..search.vocab import word_token_ids
from .base import MethodResult, RunContext, register
from .family.search import HardPromptSearch, SearchConfig


class AutoPromptConfig(SearchConfig):
    n_triggers: int = Field(3, ge=1, description="trigger tokens after the input")
    iterations: int = Field(12, ge=1, description="trigger updates (one token position each, cyclically)")
    n_candidates: int = Field(8, ge=1, description="HotFlip candidates re-scored per iteration")
    batch_size: int = Field(16, ge=1, description="train examples per gradient")
    init_token: str = Field(" the", description="every trigger starts as this token")
    label_search: bool = Field(False, description="find one label word per class first (logistic regression)")


@register
class AutoPrompt(HardPromptSearch):
    name = "autoprompt"
    description = (
        "AutoPrompt: trigger tokens after the input, HotFlip candidates re-scored in batches; optional label search."
    )
    Config = AutoPromptConfig
    generative = True

    def first_round(self, ctx: RunContext) -> int:
        cfg: AutoPromptConfig = self.config  # type: ignore[assignment]
        return cfg.n_candidates + cfg.batch_size // max(len(ctx.data.train), 1) + 1

    def fit(self, ctx: RunContext) -> MethodResult:
        cfg: AutoPromptConfig = self.config  # type: ignore[assignment]
        if cfg.label_search and ctx.task.is_generative:
            raise ConfigError(f"autoprompt: label_search finds label words, and generative task '{ctx.task.name}' "
                              "has none (its answer is text); drop label_search")
        words = self.search_label_words(ctx) if cfg.label_search else None
        labels = ctx.backbone.label_words([[w] for w in words], ctx.task.labels) if words else None
        self.start(ctx, labels)
        self.words = words
        self.base = HardPrompt.build(ctx.task.spec.template, words=words)
        self.evaluate([self.base])
        self.search(ctx)
        return self.finish({"label_words": list(words)} if words else None)

    def search_label_words(self, ctx: RunContext) -> tuple[str, ...]:
        """One word per class: logistic regression on answer hidden states, then the vocabulary token whose
        output embedding best matches each class's weight vector."""
        bb = ctx.backbone
        scorer = CandidateScorer(bb, ctx.task, ctx.labels, ctx.data.train)
        ids = bb.tokenize(scorer.render(ctx.task.spec.template))
        with torch.no_grad():
            feats = []
            for x in ids:
                feats.append(bb.decoder(input_ids=torch.tensor([x], device=bb.device)).last_hidden_state[0, -1].float())
            feats = torch.stack(feats).cpu()
        golds = scorer.golds
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            head = torch.nn.Linear(feats.shape[1], ctx.labels.num_classes)
            opt = torch.optim.Adam(head.parameters(), lr=1e-2)
            for _ in range(200):
                opt.zero_grad()
                F.cross_entropy(head((feats - feats.mean(0)) / (feats.std(0) + 1e-6)), golds).backward()
                opt.step()
        out_emb = bb.model.get_output_embeddings().weight.detach().float().cpu()
        allowed = word_token_ids(bb.tokenizer)
        sims = head.weight.detach() @ out_emb[allowed].T  # (classes, allowed)
        chosen, words = set(), []
        for c in range(sims.shape[0]):
            for j in sims[c].argsort(descending=True).tolist():
                if j not in chosen:
                    chosen.add(j)
                    words.append(bb.tokenizer.decode([int(allowed[j])]))
                    break
        return tuple(words)

    def search(self, ctx: RunContext) -> None:
        cfg: AutoPromptConfig = self.config  # type: ignore[assignment]
        bb = ctx.backbone
        tok = bb.tokenizer
        init = tok(cfg.init_token, add_special_tokens=False)["input_ids"][:1] or [word_token_ids(tok)[0].item()]
        triggers = init * cfg.n_triggers
        allowed = word_token_ids(tok)
        emb = bb.model.get_input_embeddings().weight.detach().float().cpu()[allowed]
        template = ctx.task.spec.template

        def prompt_of(trig: list[int]) -> HardPrompt:
            return HardPrompt.build(template, separator=tok.decode(trig), words=self.words)

        current = prompt_of(triggers)
        best = self.evaluate([current])
        if not best:
            return
        best_fit = best[0]
        n_train = len(self.train_scorer)
        for it in range(cfg.iterations):
            pos = it % cfg.n_triggers
            start = (it * cfg.batch_size) % n_train
            batch = [(start + i) % n_train for i in range(min(cfg.batch_size, n_train))]
            key = f"grad:{it}:{triggers}"
            grad = self.state.lookup(
                key, len(batch), lambda b=batch, t=triggers: self.train_scorer.trigger_gradient(t, b)
            )
            if grad is None:
                break
            ranked = (-(emb @ grad[pos])).argsort(descending=True)[: cfg.n_candidates]
            cands = []
            for j in ranked.tolist():
                trial = list(triggers)
                trial[pos] = int(allowed[j])
                cands.append(trial)
            fits = self.evaluate([prompt_of(c) for c in cands])
            if fits and max(fits) > best_fit:
                k = max(range(len(fits)), key=fits.__getitem__)
                triggers, best_fit = cands[k], fits[k]
            self.state.round_done()
            if self.out_of_budget:
                break

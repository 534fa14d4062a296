"""PromptBoosting (Hou et al., 2023): a pool of prompts as weak learners, combined with AdaBoost,
each with a verbalizer learned on the weighted train set; the frozen model is only queried.

Each prompt in the pool (the task template and `n_prompts - 1` random separators after the input,
Babel-style, where the paper uses LM-BFF's generated templates) is run once on the train set; the
scores of `n_words` candidate label tokens (the readable tokens the model ranks highest under the
plain template) are kept. Every boosting round then fits, for every prompt, one word per class on
the weighted data (highest weighted mean log-probability on that class minus on the others), takes
the (prompt, verbalizer) with the lowest weighted error, and gives it the SAMME weight
log((1-err)/err) + log(K-1). At inference `n_learners` weak learners vote: ten forward passes per
example by default (fewer when learners share a prompt).
"""

from __future__ import annotations

import math
import random

import torch
from pydantic import Field

from ..errors import ConfigError
from ..models import LabelWords
from ..prompts.hard import BoostedMember, BoostedPrompts, HardPrompt
from ..search.engine import CandidateScorer
from ..search.state import SearchState
from ..search.vocab import word_token_ids
from .base import Method, MethodConfig, MethodResult, RunContext, register
from .family.search import check_budget


class PromptBoostingConfig(MethodConfig):
    budget: int = Field(6000, ge=1, description="forward passes (one prompt on one example)")
    n_prompts: int = Field(10, ge=1, description="prompts in the pool")
    n_learners: int = Field(10, ge=1, description="boosting rounds (weak learners)")
    n_words: int = Field(30, ge=2, description="candidate label tokens (besides the task's own words)")
    max_tokens: int = Field(3, ge=1, description="longest random separator, in tokens")


@register
class PromptBoosting(Method):
    name = "prompt-boosting"
    description = "PromptBoosting: AdaBoost over a pool of prompts with learned verbalizers; queries only."
    Config = PromptBoostingConfig
    text_result = True
    not_generative_because = ("it learns a verbalizer (one label word per class) for every weak learner and the "
                              "learners vote over the labels, and a generative task's answer is free text with no "
                              "labels to vote over")

    def fit(self, ctx: RunContext) -> MethodResult:
        cfg: PromptBoostingConfig = self.config  # type: ignore[assignment]
        bb, task = ctx.backbone, ctx.task
        n = len(ctx.data.train)
        n_dev = len(ctx.data.dev)
        need = (cfg.n_prompts + 1) * n + cfg.n_prompts * n_dev
        check_budget(self.name, cfg.budget, need,
                     f"{cfg.n_prompts} prompts and the word ranking x {n} train examples, the prompts x {n_dev} "
                     "dev examples", instead="fewer n_prompts")
        state = SearchState(ctx.out_dir, cfg.budget, ctx.resume, ctx.run_fingerprint, ctx.callbacks)
        tok = bb.tokenizer
        allowed = word_token_ids(tok)
        base = task.spec.template
        # Candidate words: the readable tokens the model ranks highest after the plain template.
        everything = LabelWords(tuple(((int(t),),) for t in allowed))
        ranking = CandidateScorer(bb, task, everything, ctx.data.train, state, "rank").score([base])[0]
        own = [w[0] for w in ctx.labels.flat if len(w) == 1]  # the task's own words are always candidates
        top = [int(t) for t in allowed[ranking.mean(0).topk(cfg.n_words).indices] if int(t) not in own]
        words = torch.tensor(own + top)
        cand_labels = LabelWords(tuple(((int(t),),) for t in words))
        rng = random.Random(ctx.seed)
        vocab = allowed.tolist()
        templates = [base] + [
            HardPrompt.build(
                base, separator=tok.decode([rng.choice(vocab) for _ in range(rng.randint(1, cfg.max_tokens))])
            ).template
            for _ in range(cfg.n_prompts - 1)
        ]
        scorer = CandidateScorer(bb, task, cand_labels, ctx.data.train, state, "pool")
        # Word logits, centred by each word's mean over the train inputs (contextual calibration: a word the
        # prompt makes likely for every input carries no evidence), per prompt (n, n_words).
        raw = scorer.score(templates)
        offsets = [r.mean(0) for r in raw]
        logp = [r - o for r, o in zip(raw, offsets, strict=True)]
        dev_scorer = CandidateScorer(bb, task, cand_labels, ctx.data.dev, state, "pool-dev")
        dev_logp = [r - o for r, o in zip(dev_scorer.score(templates), offsets, strict=True)]
        for s in logp:
            state.record(float(s.max(1).values.mean()))
        state.round_done()
        golds, dev_golds = scorer.golds, dev_scorer.golds
        k = ctx.labels.num_classes
        weights = torch.full((n,), 1.0 / n)
        members: list[BoostedMember] = []
        history = []
        dev_votes = torch.zeros(len(dev_golds), k)
        # The floor: the plain template with the task's own words, as a one-member ensemble.
        plain = list(range(k)) if len(own) == k else None
        plain_dev = (dev_logp[0] + offsets[0])[:, plain] if plain else None  # uncalibrated, as zero-shot scores
        best_dev = float((plain_dev.argmax(1) == dev_golds).float().mean()) if plain else -1.0
        keep = 0
        for round_ in range(cfg.n_learners):
            best = None
            for j, lp in enumerate(logp):
                chosen = self._verbalizer(lp, golds, weights, k)
                preds = lp[:, chosen].argmax(1)
                err = float(weights[preds != golds].sum())
                if best is None or err < best[0]:
                    best = (err, j, chosen, preds)
            err, j, chosen, preds = best
            if err >= 1 - 1 / k:  # no better than chance on the weighted data: stop
                break
            err = max(err, 1e-6)
            alpha = math.log((1 - err) / err) + math.log(k - 1)
            members.append(BoostedMember(templates[j], tuple(tok.decode([int(words[c])]) for c in chosen), alpha,
                                         tuple(float(offsets[j][c]) for c in chosen)))
            weights = weights * torch.exp(alpha * (preds != golds).float())
            weights = weights / weights.sum()
            dev_votes[torch.arange(len(dev_golds)), dev_logp[j][:, chosen].argmax(1)] += alpha
            dev_acc = float((dev_votes.argmax(1) == dev_golds).float().mean())
            if dev_acc > best_dev:  # early stopping on dev: keep the ensemble size that scores best there
                best_dev, keep = dev_acc, len(members)
            history.append({"round": round_ + 1, "prompt": j, "weighted_error": err, "alpha": alpha,
                            "words": list(members[-1].words), "dev_accuracy": dev_acc})
        members = members[:keep]
        if not members:  # nothing beat the plain template on dev
            if not plain:
                raise ConfigError("prompt-boosting found no ensemble better than chance on the dev set")
            members = [BoostedMember(base, tuple(tok.decode([int(words[c])]) for c in plain), 1.0)]
        ensemble = BoostedPrompts(members)
        info = {
            "queries_used": state.used,
            "budget": cfg.budget,
            "learners": len(members),
            "dev_accuracy": best_dev,
            "forward_passes_per_example": len({m.template for m in members}),
            "trace": state.trace,
        }
        return MethodResult("boosted", {}, 0, history, info, text_prompt=ensemble.as_meta())

    @staticmethod
    def _verbalizer(lp: torch.Tensor, golds: torch.Tensor, weights: torch.Tensor, k: int) -> list[int]:
        """One distinct candidate word per class: weighted mean log-prob on the class minus on the rest."""
        chosen: list[int] = []
        for c in range(k):
            inside, outside = (golds == c).float() * weights, (golds != c).float() * weights
            score = (inside @ lp) / inside.sum().clamp(min=1e-12) - (outside @ lp) / outside.sum().clamp(min=1e-12)
            if chosen:
                score[chosen] = float("-inf")
            chosen.append(int(score.argmax()))
        return chosen

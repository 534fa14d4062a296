"""RLPrompt (Deng et al., 2022), compact on-policy variant: a policy over prompt tokens placed after
the input, trained with reward from the frozen model.

The paper trains a small MLP on a frozen GPT-2 with soft Q-learning. Here the policy is a
per-position categorical distribution over the `vocab_size` readable tokens the frozen model itself
finds most likely after the input (averaged over the train inputs), trained with REINFORCE. The
reward is the paper's: the gap between the gold label's probability and the best other label's,
weighted by 200 when correct and 180 when wrong, z-scored across the prompts sampled in each step
(the paper's input-specific normalisation). Every sampled prompt is kept as a candidate, and the
best on train goes to the dev pick like every other search.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..prompts.hard import HardPrompt
from ..search.vocab import word_token_ids
from .base import RunContext, register
from .family.search import HardPromptSearch, SearchConfig


class RLPromptConfig(SearchConfig):
    n_tokens: int = Field(3, ge=1, description="prompt length in tokens")
    vocab_size: int = Field(256, ge=2, description="tokens the policy chooses from")
    samples: int = Field(8, ge=2, description="prompts sampled per policy step")
    steps: int = Field(20, ge=1, description="policy updates (the budget may stop it earlier)")
    policy_lr: float = Field(0.5, gt=0)
    entropy_weight: float = Field(0.01, ge=0)


def rlprompt_reward(scores: torch.Tensor, golds: torch.Tensor) -> torch.Tensor:
    """Per-example reward: (p_gold - max other p) x (200 if correct else 180)."""
    probs = torch.softmax(scores.float(), -1)
    gold = probs.gather(1, golds[:, None])[:, 0]
    other = probs.scatter(1, golds[:, None], -1.0).max(1).values
    gap = gold - other
    return gap * torch.where(gap > 0, 200.0, 180.0)


@register
class RLPrompt(HardPromptSearch):
    name = "rlprompt"
    description = (
        "RLPrompt (compact on-policy REINFORCE variant): a token policy after the input, rewarded by the frozen model."
    )
    Config = RLPromptConfig

    def first_round(self, ctx: RunContext) -> int:
        return self.config.samples + 1  # type: ignore[attr-defined]

    def action_vocab(self, ctx: RunContext) -> torch.Tensor:
        """The readable tokens the frozen model finds most likely right after the train inputs."""
        bb, scorer = ctx.backbone, self.train_scorer
        allowed = word_token_ids(bb.tokenizer)

        def compute():
            with torch.no_grad():
                head_ids = bb.tokenize([scorer.base_head.format_map(ex.fields) for ex in ctx.data.train])
                total = torch.zeros(len(allowed))
                for x in head_ids:
                    h = bb.decoder(input_ids=torch.tensor([x], device=bb.device)).last_hidden_state[0, -1]
                    total += torch.log_softmax(bb._logits(h), -1)[allowed.to(bb.device)].cpu()
                return total

        total = self.state.lookup("policy-vocab", len(ctx.data.train), compute)
        if total is None:
            return allowed[: self.config.vocab_size]  # type: ignore[attr-defined]
        return allowed[total.topk(min(self.config.vocab_size, len(allowed))).indices]  # type: ignore[attr-defined]

    def search(self, ctx: RunContext) -> None:
        cfg: RLPromptConfig = self.config  # type: ignore[assignment]
        tok = ctx.backbone.tokenizer
        vocab = self.action_vocab(ctx)
        logits = torch.zeros(cfg.n_tokens, len(vocab), requires_grad=True)
        opt = torch.optim.Adam([logits], lr=cfg.policy_lr)
        gen = torch.Generator().manual_seed(ctx.seed)
        template = ctx.task.spec.template
        golds = self.train_scorer.golds
        for _ in range(cfg.steps):
            probs = torch.softmax(logits.detach(), -1)
            actions = torch.stack(
                [
                    torch.multinomial(probs[t], cfg.samples, replacement=True, generator=gen)
                    for t in range(cfg.n_tokens)
                ],
                1,
            )  # (samples, n_tokens)
            prompts = [HardPrompt.build(template, separator=tok.decode(vocab[a].tolist())) for a in actions]
            scores = self.train_scorer.score(prompts)
            self.evaluate(prompts[: len(scores)])
            if len(scores) < 2:
                break
            rewards = torch.stack([rlprompt_reward(s, golds) for s in scores])  # (samples, examples)
            z = (rewards - rewards.mean(0)) / (rewards.std(0) + 1e-6)  # per input, across prompts
            advantage = z.mean(1)
            log_pi = torch.log_softmax(logits, -1)
            chosen = log_pi.gather(1, actions[: len(scores)].T).T.sum(1)  # (samples,)
            entropy = -(log_pi.exp() * log_pi).sum(-1).mean()
            loss = -(advantage * chosen).mean() - cfg.entropy_weight * entropy
            opt.zero_grad()
            loss.backward()
            opt.step()
            self.state.round_done()
            if self.out_of_budget:
                break

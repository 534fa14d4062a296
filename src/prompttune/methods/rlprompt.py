"""RLPrompt (Deng et al., 2022), compact on-policy variant: a policy over prompt tokens placed after
the input, trained with reward from the frozen model.

The paper trains a small MLP on a frozen GPT-2 with soft Q-learning. Here the policy is a
per-position categorical distribution over the `vocab_size` readable tokens the frozen model itself
finds most likely after the input (averaged over the train inputs), trained with REINFORCE. The
reward is the paper's: the gap between the gold label's probability and the best other label's,
weighted by 200 when correct and 180 when wrong, z-scored across the prompts sampled in each step
(the paper's input-specific normalisation). Every sampled prompt is kept as a candidate, and the
best on train goes to the dev pick like every other search.

On a generative task the reward is the task's metric (its primary one) on the answers the frozen model
generates greedily behind each sampled prompt, per train example (one pass per generated token), z-scored
the same way; the prompt tokens form a line of their own before the answer cue, drawn from the readable
tokens the model finds most likely at the start of that line.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..prompts.hard import HardPrompt, split_template
from ..search.generative import MetricScorer
from ..search.text_edits import line_separator
from ..search.vocab import word_token_ids
from .base import RunContext, register
from .family.search import HardPromptSearch, SearchConfig, check_budget, resolved_budget


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
    generative = True

    def first_round(self, ctx: RunContext) -> int:
        return self.config.samples + 1  # type: ignore[attr-defined]

    def start(self, ctx: RunContext, labels=None) -> None:
        """On a generative task the train round generates too: check the budget pays for its worst case."""
        if ctx.task.is_generative:
            cfg: RLPromptConfig = self.config  # type: ignore[assignment]
            n_train, n_dev, new = len(ctx.data.train), len(ctx.data.dev), ctx.task.generation.max_new_tokens
            reserve = (cfg.finalists + 1) * n_dev * new
            budget = resolved_budget(cfg, ctx, reserve)
            check_budget(self.name, budget, (cfg.samples + 1) * n_train * new + n_train + reserve,
                         f"the template and {cfg.samples} sampled prompts x {n_train} train examples x {new} "
                         f"generated tokens, the policy's vocabulary on {n_train} examples, then "
                         f"{cfg.finalists + 1} finalists x {n_dev} dev examples x {new} generated tokens",
                         instead="fewer samples")
        super().start(ctx, labels)

    def scorer(self, examples, name: str, confirm: bool = False):
        """On a generative task the train scorer is the metric on generations too: it is the reward."""
        if self.ctx.task.is_generative and name == "train":
            scorer = MetricScorer(self.ctx.backbone, self.ctx.task, examples, self.state, name)
            scorer.fitness_name = f"{self.ctx.task.primary_metric} on greedy generations (the reward)"
            return scorer
        return super().scorer(examples, name, confirm)

    def build(self, ctx: RunContext, text: str) -> HardPrompt:
        template = ctx.task.spec.template
        if ctx.task.is_generative:
            return HardPrompt.build(template, separator=line_separator(template, text))
        return HardPrompt.build(template, separator=text)

    def rewards(self, ctx: RunContext, scores: list[torch.Tensor]) -> torch.Tensor:
        """(samples, examples): the paper's label-gap reward, or on a generative task the metric's value."""
        if ctx.task.is_generative:
            return torch.stack([s[:, 0] for s in scores])
        return torch.stack([rlprompt_reward(s, self.train_scorer.golds) for s in scores])

    def action_vocab(self, ctx: RunContext) -> torch.Tensor:
        """The readable tokens the frozen model finds most likely right after the train inputs."""
        bb = ctx.backbone
        allowed = word_token_ids(bb.tokenizer)
        head, tail = split_template(ctx.task.spec.template)
        if ctx.task.is_generative and tail.startswith("\n"):  # where the policy's line starts
            head += "\n"

        def compute():
            with torch.no_grad():
                head_ids = bb.tokenize([head.format_map(ex.fields) for ex in ctx.data.train])
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
        for _ in range(cfg.steps):
            probs = torch.softmax(logits.detach(), -1)
            actions = torch.stack(
                [
                    torch.multinomial(probs[t], cfg.samples, replacement=True, generator=gen)
                    for t in range(cfg.n_tokens)
                ],
                1,
            )  # (samples, n_tokens)
            prompts = [self.build(ctx, tok.decode(vocab[a].tolist())) for a in actions]
            scores = self.train_scorer.score(prompts)
            self.evaluate(prompts[: len(scores)])
            if len(scores) < 2:
                break
            rewards = self.rewards(ctx, scores)  # (samples, examples)
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

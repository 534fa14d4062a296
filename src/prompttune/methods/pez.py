"""PEZ ("Hard Prompts Made Easy", Wen et al., 2023): optimise continuous embeddings, but take every
forward pass and gradient at their projection onto the nearest vocabulary tokens, so what is
learned is always a hard prompt. The text (an instruction before the template) is the result.

The projection is a straight-through estimator: the forward uses the nearest tokens' embeddings
(cosine similarity, readable word tokens only), the gradient lands on the continuous vectors.
It trains with the shared trainer, so checkpoints, resume and best-on-dev come for free.

On a generative task the loss is the target's negative log-likelihood per token and the dev pick the
task's metric on greedy generations (target NLL breaking ties): the task's `GenerationObjective`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..evaluation import encode, evaluate_encoded
from ..objectives import objective_for
from ..prompts.hard import HardPrompt
from ..search.vocab import word_token_ids
from ..training import Evaluation, TrainConfig, train_prompt
from .base import Method, MethodResult, RunContext, register


class PEZConfig(TrainConfig):
    n_tokens: int = Field(6, ge=1, description="prompt length in tokens")
    lr: float = Field(0.1, gt=0, description="peak learning rate (the paper's 0.1)")
    weight_decay: float = Field(0.1, ge=0, description="the paper's 0.1")
    steps: int = Field(48, ge=1)
    eval_every: int = Field(8, ge=1)


class ProjectedPrompt(torch.nn.Module):
    """Continuous vectors whose forward is their nearest vocabulary tokens (straight-through)."""

    def __init__(
        self, init: torch.Tensor, vocab_embeddings: torch.Tensor, vocab_ids: torch.Tensor, suffix: torch.Tensor
    ):
        super().__init__()
        self.weight = torch.nn.Parameter(init.clone())
        self.register_buffer("vocab", F.normalize(vocab_embeddings, dim=-1), persistent=False)
        self.register_buffer("raw_vocab", vocab_embeddings, persistent=False)
        self.register_buffer("vocab_ids", vocab_ids, persistent=False)
        self.register_buffer("suffix", suffix, persistent=False)  # the newline between instruction and template

    def token_ids(self) -> torch.Tensor:
        nearest = (F.normalize(self.weight.detach(), dim=-1) @ self.vocab.T).argmax(-1)
        return self.vocab_ids[nearest]

    def forward(self) -> torch.Tensor:
        nearest = (F.normalize(self.weight.detach(), dim=-1) @ self.vocab.T).argmax(-1)
        projected = self.raw_vocab[nearest]
        return torch.cat([self.weight + (projected - self.weight).detach(), self.suffix])


@register
class PEZ(Method):
    name = "pez"
    description = (
        "PEZ (Hard Prompts Made Easy): continuous vectors projected to the nearest tokens each step; a hard prompt."
    )
    Config = PEZConfig
    text_result = True
    generative = True

    def fit(self, ctx: RunContext) -> MethodResult:
        cfg: PEZConfig = self.config  # type: ignore[assignment]
        bb = ctx.backbone
        allowed = word_token_ids(bb.tokenizer)
        table = bb.embed(allowed).detach().float()
        newline = bb.embed(torch.tensor(bb.tokenizer("\n", add_special_tokens=False)["input_ids"])).detach().float()
        gen = torch.Generator().manual_seed(ctx.seed)
        init = table[torch.randint(len(allowed), (cfg.n_tokens,), generator=gen)]
        prompt = ProjectedPrompt(init, table, allowed.to(table.device), newline).to(bb.device)
        generative = ctx.task.is_generative
        if generative:  # target NLL to train, the metric on generations to pick on dev
            objective = ctx.objective or objective_for(bb, ctx.task)
            train, dev = objective.encode(ctx.data.train), objective.encode(ctx.data.dev)

            def loss_fn(indices):
                return objective.loss(train, indices, prompt())

            def eval_fn() -> Evaluation:
                return objective.evaluate(dev, prompt())
        else:
            train = encode(bb, ctx.task, ctx.data.train)
            dev = encode(bb, ctx.task, ctx.data.dev)

            def loss_fn(indices):
                ids, golds = train.subset(indices)
                scores = bb.score(ids, ctx.labels, prompt())
                return F.cross_entropy(scores, golds.to(scores.device))

            def eval_fn() -> Evaluation:
                with torch.no_grad():
                    result = evaluate_encoded(bb, ctx.labels, dev, prompt())
                return Evaluation(result.accuracy, result.loss)

        outcome = train_prompt(
            prompt,
            loss_fn,
            eval_fn,
            len(train),
            cfg,
            ctx.seed,
            ctx.out_dir,
            resume=ctx.resume,
            progress=ctx.progress,
            callbacks=ctx.callbacks,
            fingerprint=ctx.run_fingerprint,
        )
        prompt.load_state_dict(outcome.best_state)
        text = bb.tokenizer.decode(prompt.token_ids().tolist()).strip()
        hard = HardPrompt.build(ctx.task.spec.template, instruction=text)
        evals = sum(1 for h in outcome.history if "dev_accuracy" in h)
        # forward(+backward) passes of one example; a generative dev evaluation at its most: the NLL pass and
        # max_new_tokens generated tokens per example
        per_dev = 1 + ctx.task.generation.max_new_tokens if generative else 1
        queries = cfg.steps * cfg.batch_size + evals * len(dev) * per_dev
        dev_figures = {"dev_metric": ctx.task.primary_metric, "best_dev_score": outcome.best.accuracy,
                       "initial_dev_score": outcome.history[0]["dev_accuracy"]} if generative else {}
        return MethodResult(
            prompt_kind="hard",
            tensors={},
            trainable_parameters=0,
            history=outcome.history,
            info={
                "best_step": outcome.best_step,
                "best_dev_accuracy": outcome.best.accuracy,
                "queries_used": queries,
                "token_ids": prompt.token_ids().tolist(),
                **dev_figures,
            },
            text_prompt=hard.as_meta(),
        )

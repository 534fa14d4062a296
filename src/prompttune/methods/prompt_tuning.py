"""Soft prompt tuning (Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning").

`n_tokens` trainable input embeddings go before the frozen model's input; only they are trained,
with cross-entropy over the verbalizer words at the answer position.

`PromptTuning` is also the base of every method whose prompt lives in the input-embedding space
(residual, low-rank, P-tuning): those override `build_prompt` and nothing else.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..evaluation import classification_loss, encode, evaluate_encoded
from ..prompts import SoftPrompt
from ..training import Evaluation, TrainConfig, train_prompt
from .base import Method, MethodResult, RunContext, register


class PromptTuningConfig(TrainConfig):
    n_tokens: int = Field(20, ge=1, description="soft prompt length")
    init: str = Field("text", description="text | vocab | random")
    init_text: str = Field(
        "Classify the following text into one of the given categories.",
        description="text whose embeddings initialise the prompt (init=text)",
    )


@register
class PromptTuning(Method):
    name = "prompt-tuning"
    description = "Soft prompt tuning (Lester et al.): trainable input embeddings before the frozen model."
    Config = PromptTuningConfig

    def initial_prompt(self, backbone, seed: int) -> torch.Tensor:
        cfg: PromptTuningConfig = self.config  # type: ignore[assignment]
        return SoftPrompt.initialise(backbone, cfg.n_tokens, cfg.init, cfg.init_text, seed=seed).weight.detach()

    def build_prompt(self, init: torch.Tensor) -> torch.nn.Module:
        """The trainable module, started from `init` ((n_tokens, hidden) embeddings)."""
        prompt = SoftPrompt(init.shape[0], init.shape[1])
        with torch.no_grad():
            prompt.weight.copy_(init)
        return prompt

    def param_groups(self, module: torch.nn.Module) -> list[dict] | None:
        """Optimizer groups with an `lr_scale` each; None trains everything at `lr`."""
        return None

    def count_trainable(self, model_config) -> int:
        """Trainable parameters with these hyper-parameters on a model with this HF config."""
        cfg: PromptTuningConfig = self.config  # type: ignore[assignment]
        module = self.build_prompt(torch.randn(cfg.n_tokens, model_config.hidden_size) * 0.02)
        return sum(p.numel() for p in module.parameters() if p.requires_grad)

    def fit(self, ctx: RunContext) -> MethodResult:
        cfg: PromptTuningConfig = self.config  # type: ignore[assignment]
        bb = self.backbone = ctx.backbone
        init = self.initial_prompt(bb, ctx.seed)
        with torch.random.fork_rng(devices=[]):  # the network's random init follows --seed, nothing else
            torch.manual_seed(ctx.seed)
            prompt = self.build_prompt(init).to(bb.device)
        train = encode(bb, ctx.task, ctx.data.train)
        dev = encode(bb, ctx.task, ctx.data.dev)

        def loss_fn(indices):
            ids, golds = train.subset(indices)
            return classification_loss(bb, ctx.labels, ids, golds, prompt())

        def eval_fn() -> Evaluation:
            with torch.no_grad():
                vectors = prompt()
            result = evaluate_encoded(bb, ctx.labels, dev, vectors)
            return Evaluation(result.accuracy, result.loss)

        outcome = train_prompt(
            prompt, loss_fn, eval_fn, len(train), cfg, ctx.seed, ctx.out_dir, resume=ctx.resume,
            progress=ctx.progress, param_groups=self.param_groups(prompt), callbacks=ctx.callbacks,
            fingerprint=ctx.run_fingerprint,
        )
        prompt.load_state_dict(outcome.best_state)
        with torch.no_grad():
            folded = prompt()
        if torch.is_tensor(folded):
            kind, tensors = "soft", {"prompt": folded.detach().float().cpu()}
        else:  # a deep prompt: per-layer (keys, values)
            kind = "kv"
            tensors = {"keys": torch.stack([k for k, _ in folded]).float().cpu(),
                       "values": torch.stack([v for _, v in folded]).float().cpu()}
        if not isinstance(prompt, SoftPrompt):  # keep the network, so training can go on from here
            tensors.update({f"module.{k}": v for k, v in outcome.best_state.items()})
        return MethodResult(
            prompt_kind=kind,
            tensors=tensors,
            trainable_parameters=sum(p.numel() for p in prompt.parameters() if p.requires_grad),
            history=outcome.history,
            info={"best_step": outcome.best_step, "best_dev_accuracy": outcome.best.accuracy},
        )

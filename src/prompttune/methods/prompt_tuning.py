"""Soft prompt tuning (Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning").

`n_tokens` trainable input embeddings go before the frozen model's input; only they are trained,
with cross-entropy over the verbalizer words at the answer position.

`PromptTuning` is also the base of every method whose prompt lives in the input-embedding space
(residual, low-rank, P-tuning): those override `build_prompt` and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import Field

from ..evaluation import encode, evaluate_encoded
from ..models import DeltaPrompt
from ..prompts import SoftPrompt
from ..training import CHECKPOINT, Evaluation, TrainConfig, TrainOutcome, train_prompt
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

    def prompt_input(self, prompt: torch.nn.Module):
        """What the backbone scores with: the module's output, or the module itself when the prompt
        depends on the input (it then has `for_inputs`)."""
        return prompt if hasattr(prompt, "for_inputs") else prompt()

    def fit(self, ctx: RunContext) -> MethodResult:
        cfg: PromptTuningConfig = self.config  # type: ignore[assignment]
        self.backbone = ctx.backbone
        prompt = self.seeded_build(self.initial_prompt(ctx.backbone, ctx.seed), ctx.seed)
        outcome = self.train_module(ctx, prompt, cfg)
        prompt.load_state_dict(outcome.best_state)
        return self.result(prompt, outcome)

    def seeded_build(self, init: torch.Tensor, seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):  # the network's random init follows --seed, nothing else
            torch.manual_seed(seed)
            return self.build_prompt(init).to(self.backbone.device)

    def train_module(
        self, ctx: RunContext, prompt: torch.nn.Module, cfg: TrainConfig, examples=None,
        extra_loss: Callable[[list[list[int]], torch.Tensor], torch.Tensor] | None = None,
        checkpoint: str = CHECKPOINT,
    ) -> TrainOutcome:
        """Train `prompt` with cross-entropy on `examples` (default: the task's k-shot train set),
        plus `extra_loss(token_ids, scores)` when given, selecting on dev. Each phase of a
        multi-phase method passes its own `checkpoint` file name, so each resumes on its own."""
        bb = ctx.backbone
        train = encode(bb, ctx.task, ctx.data.train if examples is None else examples)
        dev = encode(bb, ctx.task, ctx.data.dev)

        def loss_fn(indices):
            ids, golds = train.subset(indices)
            scores = bb.score(ids, ctx.labels, self.prompt_input(prompt))
            loss = F.cross_entropy(scores, golds.to(scores.device))
            return loss if extra_loss is None else loss + extra_loss(ids, scores)

        def eval_fn() -> Evaluation:
            with torch.no_grad():
                vectors = self.prompt_input(prompt)
            result = evaluate_encoded(bb, ctx.labels, dev, vectors)
            return Evaluation(result.accuracy, result.loss)

        return train_prompt(
            prompt, loss_fn, eval_fn, len(train), cfg, ctx.seed, ctx.out_dir, resume=ctx.resume,
            progress=ctx.progress, param_groups=self.param_groups(prompt), callbacks=ctx.callbacks,
            fingerprint=ctx.run_fingerprint, checkpoint=checkpoint,
        )

    def fold(self, prompt: torch.nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
        """(prompt_kind, tensors) that reproduce `prompt` at inference without its network."""
        with torch.no_grad():
            folded = self.prompt_input(prompt)
        if hasattr(folded, "for_inputs"):  # input-dependent: the generator itself is the prompt
            return "instance", {k: v.detach().float().cpu() for k, v in prompt.state_dict().items()}
        if torch.is_tensor(folded):
            return "soft", {"prompt": folded.detach().float().cpu()}
        if isinstance(folded, DeltaPrompt):
            return "dept", {"prompt": folded.embeddings.float().cpu(), "input_delta": folded.input_delta.float().cpu()}
        return "kv", {"keys": torch.stack([k for k, _ in folded]).float().cpu(),  # per-layer (keys, values)
                      "values": torch.stack([v for _, v in folded]).float().cpu()}

    def result(self, prompt: torch.nn.Module, outcome: TrainOutcome, info: dict | None = None) -> MethodResult:
        kind, tensors = self.fold(prompt)
        if not isinstance(prompt, SoftPrompt) and kind != "instance":  # keep the network, so training can go on
            tensors.update({f"module.{k}": v.detach().float().cpu() for k, v in prompt.state_dict().items()})
        tensors = {k: v.clone() for k, v in tensors.items()}  # own storage each: safetensors refuses shared memory
        return MethodResult(
            prompt_kind=kind,
            tensors=tensors,
            trainable_parameters=sum(p.numel() for p in prompt.parameters() if p.requires_grad),
            history=outcome.history,
            info={"best_step": outcome.best_step, "best_dev_accuracy": outcome.best.accuracy, **(info or {})},
        )

"""The soft family's base: prompts trained by gradient through the frozen backbone.

`SoftPromptMethod` trains `n_tokens` input embeddings (or any module that produces a prompt) with the
task's objective (cross-entropy over the verbalizer words at the answer position, or the target
text's negative log-likelihood on a generative task), selects on dev, and folds the trained
module into what inference needs (`fold`, through the prompt-kind table). Every method whose prompt
lives in the input-embedding space or the KV cache (prompt tuning, residual, low-rank, P-tuning,
prefix tuning, DePT, ...) subclasses it and overrides `build_prompt`, and little else.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ...objectives import objective_for
from ...prompts import SoftPrompt
from ...prompts.kinds import kind_of_prompt
from ...training import CHECKPOINT, Evaluation, TrainConfig, TrainOutcome, train_prompt
from ..base import Method, MethodResult, RunContext


class SoftPromptConfig(TrainConfig):
    n_tokens: int = Field(20, ge=1, description="soft prompt length")
    init: str = Field("text", description="text | vocab | random")
    init_text: str = Field(
        "Classify the following text into one of the given categories.",
        description="text whose embeddings initialise the prompt (init=text)",
    )


class SoftPromptMethod(Method):
    """Base of the methods trained by gradient through the frozen backbone: it builds the prompt module
    (`build_prompt`, from `initial_prompt`), trains it (`train_module`) and folds it into an artifact."""

    Config = SoftPromptConfig
    generative = True  # trains on generative tasks too (the target text's NLL)

    def initial_prompt(self, backbone, seed: int) -> torch.Tensor:
        cfg: SoftPromptConfig = self.config  # type: ignore[assignment]
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
        cfg: SoftPromptConfig = self.config  # type: ignore[assignment]
        module = self.build_prompt(torch.randn(cfg.n_tokens, model_config.hidden_size) * 0.02)
        return sum(p.numel() for p in module.parameters() if p.requires_grad)

    def prompt_input(self, prompt: torch.nn.Module):
        """What the backbone scores with: the module's output, or the module itself when the prompt
        depends on the input (it then has `for_inputs`)."""
        return prompt if hasattr(prompt, "for_inputs") else prompt()

    def fit(self, ctx: RunContext) -> MethodResult:
        cfg: SoftPromptConfig = self.config  # type: ignore[assignment]
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
        teacher: Any = None, distill: float = 0.0, temperature: float = 1.0, checkpoint: str = CHECKPOINT,
    ) -> TrainOutcome:
        """Train `prompt` on `examples` (default: the task's k-shot train set) with the task's objective
        (cross-entropy over label words, or the target text's NLL), plus a distillation term towards a
        `teacher` prompt when `distill` > 0, selecting on dev. Each phase of a multi-phase method passes
        its own `checkpoint` file name, so each resumes on its own."""
        objective = ctx.objective or objective_for(ctx.backbone, ctx.task)
        train = objective.encode(ctx.data.train if examples is None else examples)
        dev = objective.encode(ctx.data.dev)

        def loss_fn(indices):
            return objective.loss(train, indices, self.prompt_input(prompt), teacher=teacher, distill=distill,
                                  temperature=temperature)

        def eval_fn() -> Evaluation:
            with torch.no_grad():
                vectors = self.prompt_input(prompt)
            return objective.evaluate(dev, vectors)

        return train_prompt(
            prompt, loss_fn, eval_fn, len(train), cfg, ctx.seed, ctx.out_dir, resume=ctx.resume,
            progress=ctx.progress, param_groups=self.param_groups(prompt), callbacks=ctx.callbacks,
            fingerprint=ctx.run_fingerprint, checkpoint=checkpoint,
        )

    def fold(self, prompt: torch.nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
        """(prompt_kind, tensors) that reproduce `prompt` at inference without its network."""
        with torch.no_grad():
            folded = self.prompt_input(prompt)
        kind = kind_of_prompt(folded)  # an input-dependent prompt is the generator itself: saved as its state
        return kind.name, kind.save(folded)

    def result(self, prompt: torch.nn.Module, outcome: TrainOutcome, info: dict | None = None) -> MethodResult:
        kind, tensors = self.fold(prompt)
        saved_whole = hasattr(prompt, "for_inputs")  # an input-dependent prompt's tensors are its network already
        if not isinstance(prompt, SoftPrompt) and not saved_whole:  # keep the network, so training can go on
            tensors.update({f"module.{k}": v.detach().float().cpu() for k, v in prompt.state_dict().items()})
        tensors = {k: v.clone() for k, v in tensors.items()}  # own storage each: safetensors refuses shared memory
        return MethodResult(
            prompt_kind=kind,
            tensors=tensors,
            trainable_parameters=sum(p.numel() for p in prompt.parameters() if p.requires_grad),
            history=outcome.history,
            info={"best_step": outcome.best_step, "best_dev_accuracy": outcome.best.accuracy, **(info or {})},
        )

"""Soft prompt tuning (Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning").

`n_tokens` trainable input embeddings go before the frozen model's input; only they are trained,
with cross-entropy over the verbalizer words at the answer position.
"""

from __future__ import annotations

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

    def fit(self, ctx: RunContext) -> MethodResult:
        cfg: PromptTuningConfig = self.config  # type: ignore[assignment]
        bb = ctx.backbone
        prompt = SoftPrompt.initialise(bb, cfg.n_tokens, cfg.init, cfg.init_text, seed=ctx.seed)
        train = encode(bb, ctx.task, ctx.data.train)
        dev = encode(bb, ctx.task, ctx.data.dev)

        def loss_fn(indices):
            ids, golds = train.subset(indices)
            return classification_loss(bb, ctx.labels, ids, golds, prompt())

        def eval_fn() -> Evaluation:
            result = evaluate_encoded(bb, ctx.labels, dev, prompt())
            return Evaluation(result.accuracy, result.loss)

        outcome = train_prompt(
            prompt, loss_fn, eval_fn, len(train), cfg, ctx.seed, ctx.out_dir, resume=ctx.resume,
            progress=ctx.progress, callbacks=ctx.callbacks, fingerprint=ctx.run_fingerprint,
        )
        return MethodResult(
            prompt_kind="soft",
            tensors={"prompt": outcome.best_state["weight"]},
            trainable_parameters=prompt.weight.numel(),
            history=outcome.history,
            info={"best_step": outcome.best_step, "best_dev_accuracy": outcome.best.accuracy},
        )

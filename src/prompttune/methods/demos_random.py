"""Random demonstrations (in-context learning's baseline, DSPy's `LabeledFewShot`): k training examples,
drawn with the run's seed from the few-shot train pool, answered and put in front of the template.

Nothing is searched and no forward pass is spent: the result is the prompt itself, a hard prompt whose
template carries the demonstrations as text (prompt.json "text_prompt" lists them), which `predict`,
`serve` and `--port-to` apply unchanged. Classification tasks get their label words as answers,
generative tasks their target text.
"""

from __future__ import annotations

from typing import ClassVar

from .base import Method, MethodConfig, MethodResult, RunContext, register
from .family.demos import DemosConfig, check_pool, demos_prompt, labelled_draw


@register
class DemosRandom(Method):
    name = "demos-random"
    description = "k seeded demonstrations from the train pool in front of the template (the ICL baseline)."
    Config: ClassVar[type[MethodConfig]] = DemosConfig
    generative = True
    text_result: ClassVar[bool] = True  # plain text: it evaluates unchanged on other models (--port-to)

    def fit(self, ctx: RunContext) -> MethodResult:
        cfg: DemosConfig = self.config  # type: ignore[assignment]
        pool = len(ctx.data.train)
        check_pool(self.name, cfg.k, pool)
        indices = labelled_draw(pool, cfg.k, ctx.seed)
        prompt = demos_prompt(ctx, indices, cfg.instruction)
        return MethodResult(prompt_kind="hard", tensors={}, trainable_parameters=0,
                            info={"demos": indices, "pool": pool, "queries_used": 0},
                            text_prompt=prompt.as_meta())

"""kNN demonstrations (Liu et al., 2022, "What Makes Good In-Context Examples for GPT-3?"; DSPy's
`KNNFewShot`): per input, the k training examples nearest to it by an embedding are its demonstrations.

Nothing is searched: the pool (the few-shot train draw) is encoded once, by the frozen backbone's pooled
last hidden states (`encoder=backbone`) or a sentence encoder (`encoder=minilm-l6`, a local directory or
hub id of a BERT-style encoder), and the artifact stores the pool, its embeddings and the encoder id
(prompt kind "knn-demos", prompts/knn.py). `predict`, `serve`, `evaluate` and `--port-to` encode each
input and put its neighbours in front of it (the nearest last, right before the input). Classification
tasks get their label words as answers, generative tasks their target text.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from pydantic import Field, field_validator

from ..errors import ConfigError
from ..prompts.demos import demo_record
from ..prompts.knn import KnnDemos, check_encoder
from .base import Method, MethodConfig, MethodResult, RunContext, register
from .family.demos import DemosConfig, check_pool


class DemosKnnConfig(DemosConfig):
    encoder: str = Field("backbone", description="what embeds inputs: 'backbone' (the frozen model's mean last "
                                                 "hidden state) or a sentence encoder (minilm-l6, a path, a hub id)")

    @field_validator("encoder")
    @classmethod
    def _encoder(cls, value: str) -> str:
        try:  # a model that is not an encoder fails here, before anything is written
            return check_encoder(value)
        except ConfigError as exc:
            raise ConfigError(f"method 'demos-knn': {exc}") from None


@register
class DemosKnn(Method):
    name = "demos-knn"
    description = "Per input, its k nearest train examples (by the backbone's or a sentence encoder's embedding) " \
                  "as demonstrations."
    Config: ClassVar[type[MethodConfig]] = DemosKnnConfig
    generative = True
    text_result: ClassVar[bool] = True  # text chosen per input: evaluates on other models (--port-to re-encodes)

    def fit(self, ctx: RunContext) -> MethodResult:
        cfg: DemosKnnConfig = self.config  # type: ignore[assignment]
        pool = len(ctx.data.train)
        check_pool(self.name, cfg.k, pool)
        start = time.perf_counter()
        records = [demo_record(ctx.task, ex) for ex in ctx.data.train]
        prompt = KnnDemos.fit(ctx.backbone, ctx.task.spec.template, records, cfg.k, cfg.encoder, cfg.instruction)
        passes = pool if prompt.encoder == "backbone" else 0  # the pool encoded by the task model itself
        info = {"pool": pool, "k": cfg.k, "encoder": prompt.encoder, "queries_used": passes,
                "encode_seconds": round(time.perf_counter() - start, 3)}
        return MethodResult(prompt_kind="knn-demos", tensors={"pool_embeddings": prompt.pool},
                            trainable_parameters=0, info=info, text_prompt=prompt.as_meta())

    @classmethod
    def result_lines(cls, meta: dict[str, Any]) -> list[str]:
        text = meta.get("text_prompt") or {}
        lines = [f"demonstrations: per input, the {text.get('k')} nearest of {len(text.get('demos') or [])} train "
                 f"examples by encoder {text.get('encoder')!r}"]
        if text.get("instruction"):
            lines.append(f"instruction: {text['instruction']!r}")
        return lines

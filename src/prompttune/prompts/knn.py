"""kNN demonstrations: per input, the k training examples nearest to it by an embedding go in front of it.

A `KnnDemos` prompt holds the task's base template, a pool of demonstrations (prompts/demos.py records),
the pool's embeddings (n_pool, dim), k and the encoder id. It is a prompt that *renders its own inputs*
(`renders_own_inputs`): every place that applies a text prompt (predictors, evaluation, generation, the
server) binds it to the backbone at hand (`bind(backbone)`) and asks it for each input's text
(`render_many(items)`) instead of filling one template.

Encoders: "backbone" embeds the rendered input (the base template filled with the input's fields) as the
mean of the frozen backbone's last hidden states over its tokens; any other id names a sentence encoder
(`minilm-l6`, with `minilm` / `all-minilm-l6-v2` as other names, a local directory or hub id of a BERT-style
model) that embeds the input fields' text, mean-pooled over tokens as sentence-transformers does. Every
embedding is L2-normalised, so the dot product is the cosine similarity.

The pool is encoded once, at training; applying the prompt encodes only the inputs. The pool's embeddings
record the weights that made them (`encoded_by`, a weight fingerprint): bound to another backbone (e.g.
`--port-to`, or an artifact applied with another model), a "backbone" prompt re-encodes its pool with that
backbone, since another model's hidden states are another space; a sentence encoder's pool is re-encoded
only if the encoder's own weights changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ArtifactError, ConfigError, ModelError
from .demos import demos_block

BACKBONE = "backbone"
MINILM = "minilm-l6"
_MINILM_NAMES = {"minilm", "minilm-l6", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_EXPECTED = (f"'{BACKBONE}' (the frozen model's own pooled states) or a sentence encoder: '{MINILM}', or the local "
             "directory or hub id of a BERT-style encoder model")
_ENCODERS: dict[tuple[str, str], Any] = {}  # (encoder id, device) -> loaded sentence encoder, shared in a process


def renders_own_inputs(prompt: Any) -> bool:
    """Whether `prompt` renders each input itself (`bind(backbone).render_many(items)`) rather than
    being one template (a `HardPrompt`) or vectors the backbone takes."""
    return hasattr(prompt, "render_many") and hasattr(prompt, "bind")


def check_encoder(encoder: str) -> str:
    """The encoder id as recorded: "backbone", "minilm-l6" (for any of MiniLM's names), or a model that is an
    encoder (its config is read, not its weights). Anything else is a ConfigError naming it."""
    if encoder == BACKBONE:
        return encoder
    if encoder.lower() in _MINILM_NAMES:
        return MINILM
    from ..models.load import model_kind

    try:
        kind = model_kind(encoder)
    except ModelError as exc:
        raise ConfigError(f"encoder '{encoder}' is not a model ({exc}); expected {_EXPECTED}") from None
    if kind != "encoder":
        raise ConfigError(f"encoder '{encoder}' is a {kind} model, not a sentence encoder; expected {_EXPECTED}")
    return encoder


def sentence_encoder(encoder: str, device: torch.device) -> Any:
    """The sentence encoder `encoder` (an id `check_encoder` accepts) on `device`, loaded once per process."""
    key = (encoder, str(device))
    if key not in _ENCODERS:
        from ..models.load import load_backbone

        model = load_backbone(check_encoder(encoder), device=str(device), dtype="float32")
        if model.kind != "encoder":  # check_encoder read the config; this is what loaded
            raise ConfigError(f"encoder '{encoder}' loaded as a {model.kind} model; expected {_EXPECTED}")
        _ENCODERS[key] = model
    return _ENCODERS[key]


@torch.no_grad()
def embed_texts(model: Any, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """(n, dim) float32 on the CPU, each row L2-normalised: a causal LM's mean last hidden state over the
    text's tokens, or an encoder's mean-pooled sentence embedding."""
    if not texts:
        return torch.zeros(0, model.hidden_size)
    if hasattr(model, "pooled"):  # a causal LM
        return F.normalize(model.pooled(model.tokenize(list(texts)), batch_size), dim=-1)
    rows = [model.features(model.tokenize(list(texts[i : i + batch_size]))).cpu()
            for i in range(0, len(texts), batch_size)]
    return F.normalize(torch.cat(rows).float(), dim=-1)


class KnnDemos:
    """The k nearest pool examples (by cosine of their embeddings) as demonstrations before each input.

    Rendered input = instruction (if any) + newline, the k neighbours as demonstrations (farthest first, so
    the nearest sits right before the input), then the base template filled with the input. Neighbours are
    ranked by cosine similarity, ties by pool order (a stable sort), so one input always gets the same ones.
    """

    def __init__(self, template: str, demos: Sequence[Mapping[str, Any]], pool_embeddings: torch.Tensor, k: int,
                 encoder: str = BACKBONE, instruction: str = "", encoded_by: str = ""):
        self.template = template
        self.demos = [{"fields": {str(f): str(v) for f, v in dict(d["fields"]).items()}, "answer": str(d["answer"])}
                      for d in demos]
        self.k, self.encoder, self.instruction, self.encoded_by = int(k), encoder, instruction, encoded_by
        if not 1 <= self.k <= len(self.demos):
            raise ConfigError(f"kNN demonstrations: k={self.k} must be between 1 and the pool's size "
                              f"({len(self.demos)} example(s))")
        pool = pool_embeddings.detach().float().cpu()
        if pool.dim() != 2 or pool.shape[0] != len(self.demos):
            raise ArtifactError(f"kNN demonstrations: pool embeddings of shape {tuple(pool.shape)} do not fit a pool "
                                f"of {len(self.demos)} demonstration(s); expected ({len(self.demos)}, dim)")
        self.pool = pool  # as recorded (normalised by `embed_texts`; normalised again where compared)
        self.fields = _template_fields(template)
        self._model: Any = None  # what encodes inputs, once bound

    # ------------------------------------------------------------------ building and the record
    @classmethod
    def fit(cls, backbone: Any, template: str, demos: Sequence[Mapping[str, Any]], k: int, encoder: str = BACKBONE,
            instruction: str = "") -> KnnDemos:
        """Encode the pool (once) with `encoder` ("backbone": `backbone` itself) and bind to `backbone`."""
        unencoded = torch.zeros(len(demos), 0)  # recorded by no weights: the first bind encodes it
        return cls(template, demos, unencoded, k, check_encoder(encoder), instruction).bind(backbone)

    def as_meta(self) -> dict[str, Any]:
        """prompt.json's "text_prompt" (the embeddings go to prompt.safetensors as "pool_embeddings")."""
        return {"template": self.template, "instruction": self.instruction, "demos": [dict(d) for d in self.demos],
                "k": self.k, "encoder": self.encoder, "encoded_by": self.encoded_by}

    @classmethod
    def from_meta(cls, text: Mapping[str, Any], pool_embeddings: torch.Tensor) -> KnnDemos:
        try:
            demos = [{"fields": dict(d["fields"]), "answer": d["answer"]} for d in text["demos"]]
            return cls(str(text["template"]), demos, pool_embeddings, int(text["k"]), str(text["encoder"]),
                       str(text.get("instruction", "")), str(text.get("encoded_by", "")))
        except (KeyError, TypeError, ValueError):
            raise ArtifactError("knn-demos prompt: text_prompt needs 'template', 'demos' (each with 'fields' and "
                                "'answer'), 'k' and 'encoder'") from None
        except ConfigError as exc:
            raise ArtifactError(str(exc)) from None

    def describe(self) -> str:
        return f"the {self.k} nearest of {len(self.demos)} demonstrations by {self.encoder}"

    # ------------------------------------------------------------------ applying
    def bind(self, backbone: Any) -> KnnDemos:
        """Encode inputs with `backbone` (encoder "backbone") or with the sentence encoder, on its device.
        A "backbone" pool made by other weights than `backbone`'s is re-encoded with it (`--port-to`);
        a sentence encoder's pool only if that encoder's weights changed. Returns self."""
        model = backbone if self.encoder == BACKBONE else sentence_encoder(self.encoder, backbone.device)
        if model is self._model:
            return self
        if model.fingerprint != self.encoded_by:
            self.pool = embed_texts(model, [self.key_text(d["fields"]) for d in self.demos])
            self.encoded_by = model.fingerprint
        elif self.pool.shape[1] != model.hidden_size:
            raise ArtifactError(f"knn-demos prompt: pool embeddings are {self.pool.shape[1]}-wide, encoder "
                                f"'{self.encoder}' gives {model.hidden_size}")
        self._model = model
        return self

    def key_text(self, fields: Mapping[str, Any]) -> str:
        """What is embedded of an input: the rendered input for the backbone, the fields' text for a
        sentence encoder (the template's fixed words would only blur its sentence embedding)."""
        if self.encoder == BACKBONE:
            return self.template.format_map(dict(fields))
        return "\n".join(str(fields[f]) for f in self.fields)

    def neighbours(self, items: Sequence[Mapping[str, Any]]) -> list[list[int]]:
        """Per input, the pool indices of its k nearest demonstrations, nearest first."""
        if self._model is None:
            raise ConfigError("kNN demonstrations must be bound to a backbone (prompt.bind(backbone)) before use")
        if not items:
            return []
        missing = [f for f in self.fields if any(f not in item for item in items)]
        if missing:
            raise ConfigError(f"input lacks field(s) {', '.join(missing)} needed by the template")
        queries = embed_texts(self._model, [self.key_text(item) for item in items])
        cosine = queries @ F.normalize(self.pool, dim=-1).T
        order = torch.sort(cosine, dim=1, descending=True, stable=True).indices
        return order[:, : self.k].tolist()

    def render_many(self, items: Sequence[Mapping[str, Any]]) -> list[str]:
        """Each input's text: instruction, its neighbours as demonstrations (nearest last), the filled template."""
        head = self.instruction + "\n" if self.instruction else ""
        return [head + demos_block(self.template, [self.demos[j] for j in reversed(near)])
                + self.template.format_map(dict(item))
                for item, near in zip(items, self.neighbours(items), strict=True)]


def _template_fields(template: str) -> list[str]:
    from ..tasks.spec import template_fields

    try:
        return template_fields(template)
    except ValueError as exc:
        raise ArtifactError(f"knn-demos prompt: template {template!r} is not a template ({exc})") from None

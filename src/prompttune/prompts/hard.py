"""Hard prompts: prompts that are text.

A hard prompt is a task template: the task's own template with an instruction put before it
and/or a separator put right after the input (before the answer cue). It is applied by rendering
and tokenizing like any template, so it is plain text that evaluates unchanged on any model.
A boosted ensemble (PromptBoosting) is several such templates, each with its own verbalizer and
vote weight.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import ArtifactError, ConfigError


def _escape(text: str) -> str:
    """Text that `str.format_map` leaves as it is (braces doubled)."""
    return text.replace("{", "{{").replace("}", "}}")


def split_template(template: str) -> tuple[str, str]:
    """(head, tail): the template up to the end of its last `{field}`, and the answer cue after it.

    Scans the text itself rather than rebuilding it from `string.Formatter().parse`, which cannot
    tell `{text}` from `{text:}` (an empty format spec) and so would cut one character short.
    """
    end, i = 0, 0
    while i < len(template):
        if template.startswith(("{{", "}}"), i):  # an escaped brace
            i += 2
        elif template[i] == "{":  # a replacement field, possibly with nested fields in its format spec
            depth, i = 1, i + 1
            while i < len(template) and depth:
                depth += {"{": 1, "}": -1}.get(template[i], 0)
                i += 1
            end = i
        else:
            i += 1
    return template[:end], template[end:]


@dataclass(frozen=True)
class HardPrompt:
    """The template a hard prompt makes of a task's template."""

    template: str
    instruction: str = ""
    separator: str = ""
    words: tuple[str, ...] | None = None  # label words found by the search (one per class), else the task's
    # demonstrations in the template (prompts/demos.py): {"fields": {...}, "answer": "..."} each, for the record
    demos: tuple[dict[str, Any], ...] = field(default=(), hash=False)  # (the template, hashed, holds them)

    @classmethod
    def build(
        cls, base_template: str, instruction: str = "", separator: str = "", words: tuple[str, ...] | None = None,
        demos: Sequence[Mapping[str, Any]] = (),
    ) -> HardPrompt:
        """`instruction` + newline + demonstrations (each rendered with the base template and answered, then
        a blank line) + template, with `separator` right after the last input field."""
        from .demos import demos_block

        head, tail = split_template(base_template)
        template = head + _escape(separator) + tail
        if demos:
            template = _escape(demos_block(base_template, demos)) + template
        if instruction:
            template = _escape(instruction) + "\n" + template
        records = tuple({"fields": dict(d["fields"]), "answer": str(d["answer"])} for d in demos)
        return cls(template, instruction, separator, tuple(words) if words else None, records)

    def as_meta(self) -> dict[str, Any]:
        meta = asdict(self)
        if not self.demos:  # artifacts without demonstrations read as before
            meta.pop("demos")
        else:
            meta["demos"] = [dict(d) for d in self.demos]
        return meta

    @classmethod
    def from_meta(cls, data: Mapping[str, Any]) -> HardPrompt:
        try:
            words = data.get("words")
            demos = tuple({"fields": dict(d["fields"]), "answer": str(d["answer"])} for d in data.get("demos") or ())
            return cls(
                str(data["template"]),
                str(data.get("instruction", "")),
                str(data.get("separator", "")),
                tuple(words) if words else None,
                demos,
            )
        except (KeyError, TypeError, ValueError):
            raise ArtifactError("hard prompt: missing its 'template' (or a demonstration lacks 'fields' / "
                                "'answer')") from None

    def describe(self) -> str:
        parts = []
        if self.instruction:
            parts.append(f"instruction {self.instruction!r}")
        if self.separator:
            parts.append(f"separator {self.separator!r}")
        if self.words:
            parts.append(f"label words {list(self.words)}")
        if self.demos:
            inputs = ", ".join(repr(" / ".join(d["fields"].values())[:24]) for d in self.demos)
            parts.append(f"{len(self.demos)} demonstration(s): {inputs}")
        return ", ".join(parts) or "the plain template"


@dataclass(frozen=True)
class BoostedMember:
    """One weak learner of a boosted ensemble: a template, its own label words, its vote weight."""

    template: str
    words: tuple[str, ...]  # one word per class, in the task's label order
    alpha: float
    offsets: tuple[float, ...] | None = None  # subtracted from the words' logits (calibration), per class


@dataclass
class BoostedPrompts:
    """PromptBoosting's classifier: a weighted vote of (template, verbalizer) weak learners."""

    members: list[BoostedMember] = field(default_factory=list)

    def as_meta(self) -> dict[str, Any]:
        return {"members": [asdict(m) for m in self.members]}

    @classmethod
    def from_meta(cls, data: Mapping[str, Any]) -> BoostedPrompts:
        try:
            return cls(
                [BoostedMember(
                    str(m["template"]), tuple(m["words"]), float(m["alpha"]),
                    tuple(m["offsets"]) if m.get("offsets") else None,
                ) for m in data["members"]]
            )
        except (KeyError, TypeError):
            raise ArtifactError("boosted prompts: each member needs 'template', 'words' and 'alpha'") from None

    @torch.inference_mode()
    def scores(self, backbone, render, examples: Sequence[Any], num_classes: int, batch_size: int = 32):
        """(n, classes): the normalised weighted votes, as log-probabilities (log of 1e-6 for no vote).
        `render(template, example)` renders one input with one template."""
        votes = torch.zeros(len(examples), num_classes)
        by_template: dict[str, list[BoostedMember]] = {}
        for m in self.members:
            by_template.setdefault(m.template, []).append(m)
        for template, members in by_template.items():
            ids = backbone.tokenize([render(template, ex) for ex in examples])
            for m in members:
                labels = backbone.label_words([[w] for w in m.words])
                offsets = torch.tensor(m.offsets) if m.offsets else torch.zeros(len(m.words))
                preds = torch.cat(
                    [
                        (backbone.score(ids[i : i + batch_size], labels).float().cpu() - offsets).argmax(1)
                        for i in range(0, len(ids), batch_size)
                    ]
                )
                votes[torch.arange(len(examples)), preds] += m.alpha
        total = votes.sum(1, keepdim=True).clamp(min=1e-9)
        return torch.log((votes / total).clamp(min=1e-6))


def check_template(template: str, fields: Sequence[str], where: str) -> None:
    """A candidate template must render with exactly the task's input fields."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid template ({exc})") from None
    missing, extra = set(fields) - names, names - set(fields)
    if missing or extra:
        problem = (
            f"lacks {{{', '.join(sorted(missing))}}}" if missing else f"has unknown {{{', '.join(sorted(extra))}}}"
        )
        raise ConfigError(f"{where}: template {template!r} {problem} (the task's fields: {', '.join(fields)})")

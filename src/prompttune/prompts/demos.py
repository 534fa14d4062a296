"""Demonstrations: solved training examples put in front of an input (in-context learning).

A demonstration is an example rendered with the task's own template followed by its answer (a generative
task's target text, a classification task's first label word), so it reads exactly like the question the
model then answers. Demonstrations are joined by a blank line and put between the instruction (if any)
and the rendered input. A fixed set of demonstrations is therefore plain text in the prompt's template
(`HardPrompt.build(..., demos=...)`), which every model, the server and PEFT-free export take as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

DEMO_SEPARATOR = "\n\n"


def demo_record(task: Any, example: Any) -> dict[str, Any]:
    """What an artifact stores of one demonstration: its input fields and its answer text."""
    if task.is_generative:
        answer = task.target_text(example)
    else:
        answer = task.words()[task.label_index(example)][0]
    return {"fields": {k: str(v) for k, v in example.fields.items()}, "answer": answer}


def demo_text(template: str, record: Mapping[str, Any]) -> str:
    """One demonstration as the model reads it: the template filled with its fields, then its answer."""
    return template.format_map(dict(record["fields"])) + str(record["answer"])


def demos_block(template: str, records: Sequence[Mapping[str, Any]]) -> str:
    """The demonstrations as text, each followed by the separator (empty when there are none)."""
    return "".join(demo_text(template, r) + DEMO_SEPARATOR for r in records)

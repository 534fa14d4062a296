"""Examples from data records: the template's input fields, and the label (classification) or the rendered
acceptable answers (generative). Every error names the record's file:line."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import DataError
from .spec import TaskSpec, template_fields


@dataclass(frozen=True)
class Example:
    """One example. `fields`: template field -> text. `label`: the class ("" for a generative example).
    `answers`: a generative example's acceptable answers as rendered targets (leading space and all), the
    target's first, then the rest of the target's and the also_accept ones, without repeats; answers[0] is the
    one trained on. Empty for a classification example."""

    fields: dict[str, str]
    label: str
    origin: str  # file:line, for error messages
    answers: tuple[str, ...] = ()


def examples_of(spec: TaskSpec, records: Iterable[tuple[dict[str, Any], str]], split: str) -> list[Example]:
    out = _generative(spec, records) if spec.is_generative else _labelled(spec, records)
    if not out:
        raise DataError(f"{spec.name}: the {split} data has no examples")
    return out


def _check_columns(spec: TaskSpec, cols: dict[str, Any], origin: str) -> dict[str, str]:
    """The template's field -> column, each column present in the record."""
    needed = {f: spec.column_for(f) for f in spec.input_fields}
    for field, column in needed.items():
        if column not in cols:
            have = ", ".join(cols) or "none"
            raise DataError(f"{origin}: no column '{column}' for template field '{{{field}}}' (columns: {have})")
    return needed


def _labelled(spec: TaskSpec, records: Iterable[tuple[dict[str, Any], str]]) -> list[Example]:
    verbalizer = spec.verbalizer or {}
    labels, skipped = set(verbalizer), set(spec.skip_labels)
    label_col = spec.label_column
    out = []
    for cols, origin in records:
        if _lacks(cols, spec.keep_rows_with):
            continue
        needed = _check_columns(spec, cols, origin)
        if label_col not in cols:
            raise DataError(f"{origin}: no label column '{label_col}' (columns: {', '.join(cols)})")
        label = str(cols[label_col]).strip()
        if label in skipped:
            continue
        if label not in labels:
            raise DataError(f"{origin}: label '{label}' is not in the verbalizer (labels: {', '.join(verbalizer)})")
        out.append(Example({f: _text(cols[c]) for f, c in needed.items()}, label, origin))
    return out


def _generative(spec: TaskSpec, records: Iterable[tuple[dict[str, Any], str]]) -> list[Example]:
    out = []
    for cols, origin in records:
        if _lacks(cols, spec.keep_rows_with):
            continue
        needed = _check_columns(spec, cols, origin)
        answers = [a for template in spec.answer_templates for a in render_answers(spec, template, cols, origin)]
        if not answers:
            raise DataError(f"{origin}: the target '{spec.target}' renders no answer (an empty list); "
                            "keep_rows_with can skip such rows")
        fields = {f: _text(cols[c]) for f, c in needed.items()}
        out.append(Example(fields, "", origin, tuple(dict.fromkeys(answers))))
    return out


def render_answers(spec: TaskSpec, template: str, cols: dict[str, Any], origin: str) -> list[str]:
    """`template` filled from the record: one answer, or one per element when one of its columns holds a
    list (several acceptable answers). Two list columns in one template are an error (no products)."""
    values: dict[str, Any] = {}
    list_field = None
    for field in template_fields(template):
        column = spec.column_for(field)
        if column not in cols:
            have = ", ".join(cols) or "none"
            raise DataError(f"{origin}: no column '{column}' for target field '{{{field}}}' (columns: {have})")
        value = cols[column]
        if isinstance(value, list):
            if list_field is not None:
                raise DataError(f"{origin}: target '{template}' takes lists from both {{{list_field}}} and "
                                f"{{{field}}}; a target may take its answers from one list column")
            list_field = field
        values[field] = value if isinstance(value, list) else _text(value)
    if list_field is None:
        return [template.format_map(values)]
    return [template.format_map(values | {list_field: _text(item)}) for item in values[list_field]]


def _lacks(cols: dict[str, Any], required: list[str]) -> bool:
    """Whether the record misses one of the `keep_rows_with` columns, or has it empty."""
    return any(not (v.strip() if isinstance(v, str) else v) for v in (cols.get(column) for column in required))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)

"""The task file schema (YAML, in the style of lm-evaluation-harness task files)."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ..errors import ConfigError


class DataFiles(BaseModel):
    """Where each split lives: a path (relative to --data-dir, or absolute), `hf:<dataset>[/<config>]:<split>`,
    or `package:<distribution>/<path inside it>`."""

    model_config = ConfigDict(extra="forbid")
    train: str
    dev: str | None = None
    test: str | None = None


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    data: DataFiles
    format: str | None = Field(
        default=None, description="a built-in line format (label-text, trec-coarse); else by file extension"
    )
    fields: dict[str, str] = Field(default_factory=dict, description="template field name -> data column")
    template: str
    verbalizer: dict[str, str | list[str]]
    test_fraction: float | None = Field(
        default=None, gt=0, lt=1, description="with no test file: hold out this seeded share of train as test"
    )
    skip_labels: list[str] = Field(
        default_factory=list, description="rows with these labels are left out (a 3-class corpus as a 2-class task)"
    )

    @field_validator("verbalizer", mode="before")
    @classmethod
    def _labels_as_strings(cls, value: Any) -> Any:
        # YAML reads `0: " negative"` with an int key; data labels are compared as strings.
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value

    @field_validator("skip_labels", mode="before")
    @classmethod
    def _skipped_as_strings(cls, value: Any) -> Any:
        return [str(v) for v in value] if isinstance(value, list) else value

    @field_validator("skip_labels")
    @classmethod
    def _skipped_not_verbalized(cls, value: list[str], info: ValidationInfo) -> list[str]:
        both = sorted(set(value) & set(info.data.get("verbalizer") or {}))
        if both:
            raise ValueError(f"lists {', '.join(both)}, which the verbalizer also has")
        return value

    @field_validator("verbalizer")
    @classmethod
    def _non_empty(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        if len(value) < 2:
            raise ValueError("needs at least two labels")
        for label, words in value.items():
            if isinstance(words, list) and not words:
                raise ValueError(f"label '{label}' has an empty word list")
        return value

    @field_validator("template")
    @classmethod
    def _template_fields_known(cls, value: str) -> str:
        try:
            names = template_fields(value)
        except ValueError as exc:
            raise ValueError(f"not a valid format string: {exc}") from None
        if not names:
            raise ValueError("names no field, so the input never reaches the model")
        if "label" in names:
            raise ValueError("must not contain {label}: that is what the model predicts")
        return value

    @property
    def label_column(self) -> str:
        return self.fields.get("label", "label")

    def column_for(self, field: str) -> str:
        return self.fields.get(field, field)

    @property
    def input_fields(self) -> list[str]:
        return template_fields(self.template)

    def words(self) -> list[list[str]]:
        return [[w] if isinstance(w, str) else list(w) for w in self.verbalizer.values()]


def template_fields(template: str) -> list[str]:
    names: list[str] = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None:
            if field == "" or not field.isidentifier():
                raise ValueError(f"field {{{field}}} must be a name")
            if field not in names:
                names.append(field)
    return names


def parse_task_yaml(text: str, origin: str) -> TaskSpec:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark else origin
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: a task file must be a YAML mapping (name, data, template, verbalizer)")
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "task"
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{origin}: field '{loc}': {msg}") from None


def read_task_file(path: Path) -> TaskSpec:
    if not path.exists():
        raise ConfigError(f"task file {path} does not exist")
    return parse_task_yaml(path.read_text(encoding="utf-8"), str(path))

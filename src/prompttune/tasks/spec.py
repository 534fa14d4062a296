"""The task file schema (YAML, in the style of lm-evaluation-harness task files).

A task is a classification task (`verbalizer`: label -> word(s)) or a generative one (`target`: a template
of the answer text over the data columns); never both. Errors name the file, the line of the offending key
and the key, so a user can go straight to it.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..errors import ConfigError
from .answer_metrics import get_metric, metric_label

# Keys that only a generative task may set (a classification task scores with its verbalizer).
GENERATIVE_ONLY = ("also_accept", "metric", "generation", "dev_metric")


class SpecValueError(ValueError):
    """A validation error that knows where below the validated value it lies (`at`: the rest of the key path),
    so the error line points at that key in the YAML file."""

    def __init__(self, message: str, at: tuple[str | int, ...] = ()):
        super().__init__(message)
        self.at = tuple(at)


class DataFiles(BaseModel):
    """Where each split lives: a path (relative to --data-dir, or absolute), `hf:<dataset>[/<config>]:<split>`,
    or `package:<distribution>/<path inside it>`."""

    model_config = ConfigDict(extra="forbid")
    train: str
    dev: str | None = None
    test: str | None = None


class GenerationSpec(BaseModel):
    """How a generative task's answer is decoded: greedily, up to `max_new_tokens`, cut at the first stop string."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(default=32, ge=1)
    stop: list[str] = Field(default_factory=lambda: ["\n"])

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: list[str]) -> list[str]:
        for i, stop in enumerate(value):
            if stop == "":
                raise SpecValueError("an empty stop string would end every answer before its first token", (i,))
        return value


class MetricSpec(BaseModel):
    """One metric of a generative task: a name from `answer_metrics` (or `python:module:function`) and its
    options. `report_name` is how reports, dev selection and `Task.metrics` name it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def report_name(self) -> str:
        return metric_label(self.name, self.options)


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    data: DataFiles
    format: str | None = Field(
        default=None, description="a built-in line format (label-text, trec-coarse, bio, cause-effect); else by "
                                  "file extension"
    )
    fields: dict[str, str] = Field(default_factory=dict, description="template field name -> data column")
    template: str
    verbalizer: dict[str, str | list[str]] | None = Field(default=None, description="classification: label -> word(s)")
    target: str | None = Field(
        default=None, description="generative: the answer as a template over data columns; a list-valued column "
                                  "gives several acceptable answers (the first is trained on)")
    also_accept: list[str] = Field(
        default_factory=list, description="generative: more answer templates, scored as right but never trained on")
    metric: list[MetricSpec] = Field(default_factory=list, description="generative: the first is the primary one")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    dev_metric: str | None = Field(
        default=None, description="generative: select on dev by 'nll' (target NLL, fast) or by one of the metrics")
    keep_rows_with: list[str] = Field(
        default_factory=list, description="data columns a row must have, non-empty, to be kept (others are skipped)")
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
    def _non_empty(cls, value: dict[str, str | list[str]] | None) -> dict[str, str | list[str]] | None:
        if value is None:
            return value
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

    @field_validator("target")
    @classmethod
    def _target_names_a_column(cls, value: str | None) -> str | None:
        if value is not None:
            _answer_template(value)
        return value

    @field_validator("also_accept")
    @classmethod
    def _also_accept_name_columns(cls, value: list[str]) -> list[str]:
        for i, template in enumerate(value):
            try:
                _answer_template(template)
            except ValueError as exc:
                raise SpecValueError(str(exc), (i,)) from None
        return value

    @field_validator("metric", mode="before")
    @classmethod
    def _metrics_as_list(cls, value: Any) -> Any:
        """`exact_match`, `{name: exact_match, lower: false}`, or a list of these -> [{name, options}]."""
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        return [_metric_entry(item, i) for i, item in enumerate(items)]

    @field_validator("metric")
    @classmethod
    def _metrics_resolve(cls, value: list[MetricSpec]) -> list[MetricSpec]:
        """Bind each metric now, so an unknown name, a user metric that does not import or a bad option fails
        before any model loads."""
        seen: dict[str, int] = {}
        for i, metric in enumerate(value):
            try:
                get_metric(metric.name, **metric.options)
            except ConfigError as exc:
                raise SpecValueError(str(exc), (i,)) from None
            if metric.report_name in seen:
                raise SpecValueError(f"'{metric.report_name}' is listed twice (entries {seen[metric.report_name]} "
                                     f"and {i})", (i,))
            seen[metric.report_name] = i
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> TaskSpec:
        """Exactly one of verbalizer / target, and only the keys that kind uses; a generative task gets its
        default metric (exact_match) and its dev metric as a report name."""
        if self.verbalizer is not None and self.target is not None:
            raise SpecValueError("a task has a verbalizer (classification) or a target (generative), not both",
                                 ("target",))
        if self.verbalizer is None and self.target is None:
            raise SpecValueError("missing: a task needs a verbalizer (classification: label -> word) or a target "
                                 "(generative: the answer as a template naming a data column, e.g. ' {output}')",
                                 ("target",))
        if self.verbalizer is not None:
            for key in GENERATIVE_ONLY:
                if key in self.model_fields_set:
                    raise SpecValueError("is only for generative tasks (with a target); this one has a verbalizer",
                                         (key,))
            return self
        if self.skip_labels:
            raise SpecValueError("is only for classification tasks (with a verbalizer)", ("skip_labels",))
        answer_fields = {f for t in [self.target or "", *self.also_accept] for f in template_fields(t)}
        leaked = [f for f in self.input_fields if f in answer_fields]
        if leaked:
            raise SpecValueError(f"uses {{{leaked[0]}}}, which the target renders: the answer would be in the input",
                                 ("template",))
        if not self.metric:
            self.metric = [MetricSpec(name="exact_match")]
        self.dev_metric = self._dev_metric_name()
        return self

    def _dev_metric_name(self) -> str | None:
        if self.dev_metric is None or self.dev_metric == "nll":
            return self.dev_metric
        for metric in self.metric:
            if self.dev_metric in (metric.name, metric.report_name):
                return metric.report_name
        names = ", ".join(["nll"] + [m.report_name for m in self.metric])
        raise SpecValueError(f"'{self.dev_metric}' is not one of this task's metrics (choose: {names})",
                             ("dev_metric",))

    @property
    def is_generative(self) -> bool:
        return self.target is not None

    @property
    def label_column(self) -> str:
        return self.fields.get("label", "label")

    def column_for(self, field: str) -> str:
        return self.fields.get(field, field)

    @property
    def input_fields(self) -> list[str]:
        return template_fields(self.template)

    @property
    def answer_templates(self) -> list[str]:
        """The target, then the also_accept templates (empty for a classification task)."""
        return [self.target, *self.also_accept] if self.target is not None else []

    def words(self) -> list[list[str]]:
        if self.verbalizer is None:
            raise ConfigError(f"task '{self.name}' is generative: it has a target, not a verbalizer's words")
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


def _answer_template(template: str) -> None:
    """An answer template must name at least one data column: a constant answer teaches nothing."""
    hint = "must name a data column, e.g. ' {output}'"
    if not template.strip():
        raise ValueError(f"is empty: it {hint}")
    try:
        names = template_fields(template)
    except ValueError as exc:
        raise ValueError(f"not a valid format string: {exc}") from None
    if not names:
        raise ValueError(f"names no field: it {hint}")


def _metric_entry(item: Any, i: int) -> Any:
    if isinstance(item, str):
        return {"name": item}
    if isinstance(item, dict) and isinstance(item.get("name"), str):
        if set(item) == {"name", "options"} and isinstance(item["options"], dict):
            return item
        return {"name": item["name"], "options": {k: v for k, v in item.items() if k != "name"}}
    raise SpecValueError("each metric is a name or a mapping with a 'name' (and its options beside it)", (i,))


def parse_task_yaml(text: str, origin: str, lines: bool = True) -> TaskSpec:
    """The spec of a task file's text. `origin` starts every error; with `lines`, errors also give the line of
    the offending key (built-in tasks have no file a user could open, so they leave it out)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark else origin
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: a task file must be a YAML mapping (name, data, template, and a verbalizer or "
                          "a target)")
    return validate_spec(raw, origin, yaml.compose(text, Loader=yaml.SafeLoader) if lines else None)


def validate_spec(raw: dict[str, Any], origin: str, root: yaml.Node | None = None) -> TaskSpec:
    """`raw` as a TaskSpec, or a ConfigError of one line: origin[:line]: field 'key.path': why."""
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        cause = (err.get("ctx") or {}).get("error")
        loc = tuple(err["loc"]) + (cause.at if isinstance(cause, SpecValueError) else ())
        where = origin
        if root is not None:
            line, loc = _locate(root, loc)
            where = f"{origin}:{line}"
        key = ".".join(str(p) for p in loc) or "task"
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}: field '{key}': {msg}") from None


def _locate(root: yaml.Node, loc: tuple[Any, ...]) -> tuple[int, tuple[Any, ...]]:
    """The line of the deepest key of `loc` the YAML has, and `loc` cut where the YAML holds a plain value
    (`metric: bleurt` is reported as 'metric', not 'metric.0'). A missing key gives the line of its parent."""
    node, line = root, root.start_mark.line + 1
    for depth, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)),
                         None)
            if found is None:
                return line, loc
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line, loc[:depth]
    return line, loc


def read_task_file(path: Path) -> TaskSpec:
    if not path.exists():
        raise ConfigError(f"task file {path} does not exist")
    return parse_task_yaml(path.read_text(encoding="utf-8"), str(path))

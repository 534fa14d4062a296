"""Grid files: methods x tasks x shots x seeds x models, validated whole before anything runs.

Every error names the grid file, the line and the key, so a typo in a hyper-parameter three screens
down fails in a second instead of after an hour of runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError, PromptTuneError

AXES = ("models", "tasks", "shots", "seeds", "methods")
OPTIONS = {
    "data_dir": "folder the tasks' data paths are relative to",
    "dev_shots": "dev examples per class (default: shots)",
    "eval_split": "split scored at the end (default: the task's test split)",
    "eval_limit": "score only the first N held-out examples",
    "runs_dir": "where artifacts go (default: <db>.runs/ beside the database)",
    "retries": "attempts after the first for a cell that raises or whose worker dies (default 1)",
    "resources": "per-run resources for Ray: {cpus: 1, gpus: 0}",
    "claims": "orderings the report checks (see docs/benchmarks.md)",
}
METHOD_KEYS = ("name", "label")  # every other key of a method entry is one of its hyper-parameters
CLAIM_KINDS = ("better", "at_least", "within", "close_to_oracle")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: dict[str, Any]
    label: str


@dataclass(frozen=True)
class Cell:
    """One run of the grid; `key` (the config hash) identifies it across reruns."""

    model: str
    task: str
    shots: int
    seed: int
    method: MethodSpec
    data_dir: str | None
    dev_shots: int | None
    eval_split: str | None
    eval_limit: int | None

    @property
    def config(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "shots": self.shots, "seed": self.seed,
                "method": self.method.name, "params": self.method.params, "label": self.method.label,
                "data_dir": self.data_dir, "dev_shots": self.dev_shots, "eval_split": self.eval_split,
                "eval_limit": self.eval_limit}

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Grid:
    path: Path
    models: list[str]
    tasks: list[str]
    shots: list[int]
    seeds: list[int]
    methods: list[MethodSpec]
    data_dir: str | None = None
    dev_shots: int | None = None
    eval_split: str | None = None
    eval_limit: int | None = None
    runs_dir: str | None = None
    retries: int = 1
    resources: dict[str, float] = field(default_factory=lambda: {"cpus": 1, "gpus": 0})
    claims: list[dict[str, Any]] = field(default_factory=list)

    def override_resources(self, cpus: float | None = None, gpus: float | None = None) -> None:
        """Per-run Ray resources given on the command line, over the grid's `resources`."""
        for flag, key, value in (("--cpus-per-run", "cpus", cpus), ("--gpus-per-run", "gpus", gpus)):
            if value is not None:
                if value < 0:
                    raise ConfigError(f"{flag} {value}: must not be negative")
                self.resources[key] = value

    def cells(self) -> list[Cell]:
        return [
            Cell(model, task, shots, seed, method, self.data_dir, self.dev_shots, self.eval_split, self.eval_limit)
            for model in self.models for task in self.tasks for shots in self.shots
            for method in self.methods for seed in self.seeds
        ]


def _line_map(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """1-based line of every key and item in the YAML document, by path (keys and list indices)."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            sub = (*path, key_node.value)
            out[sub] = key_node.start_mark.line + 1
            _line_map(value_node, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*path, i), out)
    return out


class _Where:
    def __init__(self, path: Path, lines: dict[tuple, int]):
        self.path, self.lines = path, lines

    def error(self, keys: tuple, message: str) -> ConfigError:
        probe = keys
        while probe not in self.lines and probe:
            probe = probe[:-1]
        line = self.lines.get(probe, 1)
        name = "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if i else str(k)) for i, k in enumerate(keys))
        return ConfigError(f"{self.path}:{line}: {name or 'grid'}: {message}")


def _resolve(value: str, grid_dir: Path) -> str:
    """A relative path as the user meant it: from the working directory, else from the grid file's folder."""
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists() or not (grid_dir / p).exists():
        return str(p)
    return str(grid_dir / p)


def _axis(doc: dict, key: str, kind: type, where: _Where) -> list:
    if key not in doc:
        raise where.error((), f"missing axis '{key}' (a grid needs {', '.join(AXES)})")
    values = doc[key]
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise where.error((key,), "empty axis: list at least one value")
    for i, v in enumerate(values):
        if kind is int and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise where.error((key, i), f"expected a non-negative integer, got {v!r}")
        if kind is str and not isinstance(v, str):
            raise where.error((key, i), f"expected a name, got {v!r}")
    if len(set(map(str, values))) != len(values):
        raise where.error((key,), f"the same value is listed twice: {values}")
    return values


def _method(entry: Any, i: int, where: _Where) -> MethodSpec:
    from ..methods import get_method

    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise where.error(("methods", i), "a method is a name or a mapping with 'name' and its hyper-parameters")
    try:
        cls = get_method(entry["name"])
    except PromptTuneError as exc:
        raise where.error(("methods", i, "name"), str(exc).replace("--method ", "method ")) from None
    params = {k: v for k, v in entry.items() if k not in METHOD_KEYS}
    known = cls.Config.model_fields
    for key in params:
        if key not in known:
            raise where.error(("methods", i, key), f"'{key}' is not a hyper-parameter of '{cls.name}' "
                              f"(its hyper-parameters: {', '.join(known) or 'none'})")
    try:
        cls.Config.model_validate(params)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = err["loc"][0] if err["loc"] else "name"
        raise where.error(("methods", i, key), f"{err['msg']} (got {err.get('input')!r})") from None
    return MethodSpec(cls.name, params, str(entry.get("label") or ""))


def _labelled(methods: list[MethodSpec]) -> list[MethodSpec]:
    """A method's label is its name, plus its hyper-parameters where the grid lists the method twice."""
    names = [m.name for m in methods]
    return [m if m.label else MethodSpec(m.name, m.params, m.name if names.count(m.name) == 1 else m.name + "".join(
        f" {k}={v}" for k, v in sorted(m.params.items()))) for m in methods]


def _check_claims(claims: Any, where: _Where) -> list[dict[str, Any]]:
    if not isinstance(claims, list):
        raise where.error(("claims",), "a list of claims")
    for i, claim in enumerate(claims):
        if not isinstance(claim, dict) or "claim" not in claim:
            raise where.error(("claims", i), "a claim is a mapping with 'claim' (its wording) and one of "
                              + ", ".join(CLAIM_KINDS))
        kinds = [k for k in CLAIM_KINDS if k in claim]
        if len(kinds) != 1:
            raise where.error(("claims", i), f"name exactly one of {', '.join(CLAIM_KINDS)}")
        unknown = set(claim) - {"claim", "source", "than", "tolerance", "tasks", *CLAIM_KINDS}
        if unknown:
            raise where.error(("claims", i, sorted(unknown)[0]), "unknown claim key")
        if kinds[0] != "close_to_oracle" and "than" not in claim:
            raise where.error(("claims", i), f"'{kinds[0]}' compares two methods: add 'than'")
    return claims


class _TaskLoads:
    """Whether a kind loads a task (each pair tried once): the error it gave, or None."""

    def __init__(self, data_dir: str | None):
        self.data_dir, self.seen = data_dir, {}

    def error(self, kind, task: str) -> PromptTuneError | None:
        key = (kind.name, task)
        if key not in self.seen:
            try:
                kind.load_task(task, self.data_dir)
                self.seen[key] = None
            except PromptTuneError as exc:
                self.seen[key] = exc
            except (OSError, ValueError) as exc:  # a file another kind reads: not one of this kind's tasks
                self.seen[key] = ConfigError(str(exc))
        return self.seen[key]


def _kinds_of(methods: list[MethodSpec], tasks: list[str], models: list[str]) -> dict[tuple[int, int], list]:
    """The kinds each method runs as on each task, over the grid's models, as `prompttune.train` picks them
    (a text method is of kind text on a classification task and of kind generation on a generative one)."""
    from ..kinds import kind_for
    from ..methods import get_method

    memo: dict[tuple, Any] = {}
    out: dict[tuple[int, int], list] = {}
    for i, m in enumerate(methods):
        backbone_kinds = get_method(m.name).backbone_kinds
        for j, t in enumerate(tasks):
            for model in models:
                key = (backbone_kinds, model, t)
                if key not in memo:
                    memo[key] = kind_for(backbone_kinds, m.name, model, t)
            found = [memo[(backbone_kinds, model, t)] for model in models]
            out[(i, j)] = list({k.name: k for k in found}.values())
    return out


def _check_kinds(methods: list[MethodSpec], tasks: list[str], models: list[str], data_dir: str | None,
                 where: _Where) -> None:
    """Each method runs on each task: the kind it runs as there (text, generation, clip, ...) must load the
    task and take the method (a generative task refuses a method that only classifies). A task no kind of
    the grid's methods loads, nor any other kind, is reported on its own line with the error of the first."""
    from ..kinds import kinds
    from ..methods import get_method

    chosen = _kinds_of(methods, tasks, models)
    loads = _TaskLoads(data_dir)
    for j, t in enumerate(tasks):
        needed = list({k.name: k for i in range(len(methods)) for k in chosen[(i, j)]}.values())
        errors = [loads.error(k, t) for k in needed]
        if all(errors) and not any(loads.error(k, t) is None for k in kinds().values() if k not in needed):
            raise where.error(("tasks", j), str(errors[0]))
    for i, m in enumerate(methods):
        wrong: dict[str, list[str]] = {}
        for j, t in enumerate(tasks):
            for kind in chosen[(i, j)]:
                if loads.error(kind, t) is not None:
                    wrong.setdefault(kind.name, []).append(t)
        if wrong:
            kind_name, bad = next(iter(wrong.items()))
            raise where.error(("methods", i), f"method '{m.name}' needs a {kind_name} task; task(s) {', '.join(bad)} "
                              f"are not of kind '{kind_name}' (put methods of different kinds in separate grids)")
        for j, t in enumerate(tasks):
            for model in models:
                for kind in chosen[(i, j)]:
                    try:
                        kind.check_method(m.name, get_method(m.name), t, model)
                    except PromptTuneError as exc:
                        raise where.error(("methods", i), str(exc)) from None


def load_grid(path: str | Path) -> Grid:
    """Parse and validate a grid file; raises `ConfigError` naming file, line and key."""
    from ..models.loading import ALIASES, _looks_like_path

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}:1: a grid file is a mapping with {', '.join(AXES)}")
    where = _Where(path, _line_map(node) if node is not None else {})
    for key in doc:
        if key not in AXES and key not in OPTIONS:
            raise where.error((key,), f"unknown key (a grid has {', '.join(AXES)} and optionally {', '.join(OPTIONS)})")

    grid_dir = path.resolve().parent
    data_dir = doc.get("data_dir")
    if data_dir is not None:
        data_dir = _resolve(str(data_dir), grid_dir)
        if not Path(data_dir).is_dir():
            raise where.error(("data_dir",), f"{data_dir} is not a directory")
    models = _axis(doc, "models", str, where)
    for i, m in enumerate(models):
        if m not in ALIASES and not _looks_like_path(m) and m.count("/") != 1:
            raise where.error(("models", i), f"unknown model '{m}' (built-in: {', '.join(ALIASES)}; or a local "
                              "path or a hub id org/name)")
        if _looks_like_path(m):
            models[i] = _resolve(m, grid_dir)
            if not Path(models[i]).exists():
                raise where.error(("models", i), f"model path {models[i]} does not exist")
    tasks = _axis(doc, "tasks", str, where)
    for i, t in enumerate(tasks):  # a file or a path is relative to the grid; a bare name is a built-in task
        if t.endswith((".yaml", ".yml", ".csv")) or "/" in t or t.startswith((".", "~")):
            tasks[i] = _resolve(t, grid_dir)
    shots = _axis(doc, "shots", int, where)
    seeds = _axis(doc, "seeds", int, where)
    if "methods" not in doc:
        raise where.error((), f"missing axis 'methods' (a grid needs {', '.join(AXES)})")
    if not isinstance(doc["methods"], list) or not doc["methods"]:
        raise where.error(("methods",), "empty axis: list at least one method")
    methods = _labelled([_method(entry, i, where) for i, entry in enumerate(doc["methods"])])
    _check_kinds(methods, tasks, models, data_dir, where)
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise where.error(("methods",), f"two methods share the label {labels}; give one a 'label:'")
    options: dict[str, Any] = {}
    for key in ("dev_shots", "eval_limit", "retries"):
        if key in doc and (not isinstance(doc[key], int) or doc[key] < 0):
            raise where.error((key,), f"expected a non-negative integer, got {doc[key]!r}")
        if key in doc:
            options[key] = doc[key]
    if "eval_split" in doc:
        options["eval_split"] = str(doc["eval_split"])
    if "runs_dir" in doc:
        options["runs_dir"] = _resolve(str(doc["runs_dir"]), grid_dir)
    if "resources" in doc:
        res = doc["resources"]
        if not isinstance(res, dict) or set(res) - {"cpus", "gpus"}:
            raise where.error(("resources",), "expected {cpus: N, gpus: N}")
        options["resources"] = {"cpus": 1, "gpus": 0, **res}
    claims = _check_claims(doc.get("claims", []), where)
    return Grid(path, models, tasks, shots, seeds, methods, data_dir=data_dir, claims=claims, **options)

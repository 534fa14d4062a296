"""A task: examples + template + verbalizer (classification) or target (generative), and the few-shot
splits drawn from it."""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError, PromptTuneError
from .answer_metrics import Metric, get_metric
from .builtin_generative import builtin_task_families, family_spec, is_family_name
from .examples import Example, examples_of
from .loaders import read_records, resolve_path
from .spec import GenerationSpec, TaskSpec, parse_task_yaml, read_task_file

# Held-out test slices (test_fraction) use their own fixed seed, so every run seed sees the same test set.
HOLDOUT_SEED = 1234


@dataclass
class FewShot:
    train: list[Example]
    dev: list[Example]


class Task:
    def __init__(self, spec: TaskSpec, splits: dict[str, list[Example]], origin: str,
                 files: dict[str, Path] | None = None):
        self.spec = spec
        self.splits = splits
        self.origin = origin
        self.files = files or {}  # data split -> the local file it was read from
        self._data_identity: dict[str, dict[str, Any]] | None = None
        self._metrics: list[tuple[str, Metric]] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_generative(self) -> bool:
        return self.spec.is_generative

    @property
    def labels(self) -> list[str]:
        """The classes (empty for a generative task)."""
        return list(self.spec.verbalizer or {})

    @property
    def metrics(self) -> list[tuple[str, Metric]]:
        """A generative task's metrics as (report name, bound function), the primary first; report names are
        `answer_metrics.metric_label`: "f1", "exact_match(lower=False)". Empty for a classification task."""
        if self._metrics is None:
            self._metrics = [(m.report_name, get_metric(m.name, **m.options)) for m in self.spec.metric]
        return self._metrics

    @property
    def primary_metric(self) -> str:
        """The report name of the first metric; "accuracy" for a classification task."""
        return self.spec.metric[0].report_name if self.is_generative else "accuracy"

    @property
    def generation(self) -> GenerationSpec:
        return self.spec.generation

    def target_text(self, example: Example) -> str:
        """The answer a generative example trains on: its first acceptable answer."""
        if not example.answers:
            raise ConfigError(f"{example.origin}: task '{self.name}' has no target text for this example "
                              "(a classification task scores labels)")
        return example.answers[0]

    def words(self) -> list[list[str]]:
        return self.spec.words()

    def render(self, example: Example) -> str:
        return self.spec.template.format_map(example.fields)

    def label_index(self, example: Example) -> int:
        return self.labels.index(example.label)

    def few_shot(self, shots: int, seed: int, dev_shots: int | None = None) -> FewShot:
        """k examples per class (classification; k in all for a generative task) for train and, disjointly,
        for dev (LM-BFF), drawn with `seed`.

        Dev comes from the task's dev split when it has one, else from what train has left.
        """
        if shots < 1:
            raise ConfigError(f"--shots must be at least 1, got {shots}")
        dev_k = shots if dev_shots is None else dev_shots
        rng = random.Random(seed)
        if self.is_generative:
            return self._few_shot_generative(shots, dev_k, rng)
        train_pool = _by_label(self.splits["train"], self.labels)
        train = _draw(train_pool, shots, rng, "train", self.origin)
        if "dev" in self.splits:
            dev = _draw(_by_label(self.splits["dev"], self.labels), dev_k, rng, "dev", self.origin, strict=False)
        else:
            dev = _draw(train_pool, dev_k, rng, "train (for dev)", self.origin, strict=False)
        return FewShot(train, dev)

    def _few_shot_generative(self, shots: int, dev_k: int, rng: random.Random) -> FewShot:
        if dev_k < 1:
            raise ConfigError(f"--dev-shots must be at least 1, got {dev_k}")
        pool = list(self.splits["train"])
        if len(pool) < shots:
            raise DataError(f"{self.origin}: train has {len(pool)} examples, fewer than --shots {shots}")
        rng.shuffle(pool)
        train, rest = pool[:shots], pool[shots:]
        what = "dev"
        if "dev" in self.splits:
            rest = list(self.splits["dev"])
            rng.shuffle(rest)
        else:
            what = f"train after the {shots} shots (the dev examples come from there)"
        if len(rest) < dev_k:
            raise DataError(f"{self.origin}: {what} has {len(rest)} examples, fewer than --dev-shots {dev_k}")
        return FewShot(train, rest[:dev_k])

    def split(self, name: str) -> list[Example]:
        if name not in self.splits:
            raise ConfigError(f"task '{self.name}' has no '{name}' split (it has: {', '.join(self.splits)})")
        return self.splits[name]

    def data_identity(self) -> dict[str, dict[str, Any]]:
        """Per data split of the task file: its source, and the size and sha256 of its file (of its
        examples, for hf: sources). Part of a run's fingerprint, so a resumed run notices changed data."""
        if self._data_identity is None:
            out: dict[str, dict[str, Any]] = {}
            for split in ("train", "dev", "test"):
                source = getattr(self.spec.data, split)
                if not source:
                    continue
                path = self.files.get(split)
                if path is not None:
                    h = hashlib.sha256()
                    with open(path, "rb") as f:
                        for chunk in iter(lambda: f.read(1 << 20), b""):
                            h.update(chunk)
                    out[split] = {"source": source, "size": path.stat().st_size, "sha256": h.hexdigest()}
                else:  # read through a library: hash what it gave
                    rows = [[ex.fields, ex.label, *([list(ex.answers)] if ex.answers else [])]
                            for ex in self.splits.get(split, [])]
                    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
                    out[split] = {"source": source, "examples": len(rows), "sha256": digest}
            self._data_identity = out
        return self._data_identity

    @property
    def eval_split_name(self) -> str:
        return "test" if "test" in self.splits else ("dev" if "dev" in self.splits else "train")


def _by_label(examples: list[Example], labels: list[str]) -> dict[str, list[Example]]:
    pool: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        pool[ex.label].append(ex)
    return {label: pool.get(label, []) for label in labels}


def _draw(pool: dict[str, list[Example]], k: int, rng: random.Random, what: str, origin: str,
          strict: bool = True) -> list[Example]:
    """Take k per class out of `pool` (removing them, so later draws are disjoint)."""
    out = []
    for label, items in pool.items():
        if len(items) < k and strict:
            raise DataError(f"{origin}: label '{label}' has {len(items)} examples in {what}, fewer than --shots {k}")
        rng.shuffle(items)
        take = min(k, len(items))
        out.extend(items[:take])
        del items[:take]
    if not out:
        raise DataError(f"{origin}: no examples left in {what} for a dev set")
    rng.shuffle(out)
    return out


def builtin_tasks() -> list[str]:
    root = resources.files("prompttune.tasks").joinpath("builtin")
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def load_spec(name_or_path: str, data_dir: str | Path | None = None) -> tuple[TaskSpec, str]:
    """The spec of a task file, a built-in task or a built-in family member (`ii:<task>`,
    `mit-movies:<slot>`, which need `data_dir` to know their members), and where it came from."""
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith((".yaml", ".yml")) or path.exists():
        return read_task_file(path), str(path.resolve())
    if name_or_path in builtin_tasks():
        text = resources.files("prompttune.tasks").joinpath("builtin", f"{name_or_path}.yaml").read_text()
        return parse_task_yaml(text, f"built-in task {name_or_path}", lines=False), name_or_path
    if is_family_name(name_or_path):
        return family_spec(name_or_path, Path(data_dir).expanduser() if data_dir else None), name_or_path
    raise ConfigError(
        f"--task '{name_or_path}' is neither a built-in task ({', '.join(builtin_tasks() + builtin_task_families())})"
        " nor a task YAML file"
    )


def load_task(name_or_path: str, data_dir: str | Path | None = None) -> Task:
    """Load a built-in task by name, or a task YAML file, reading its data from `data_dir`."""
    root = Path(data_dir).expanduser() if data_dir else None
    spec, origin = load_spec(name_or_path, root)
    if root is not None and not root.is_dir():
        raise DataError(f"--data-dir {root} is not a directory")
    splits: dict[str, list[Example]] = {}
    files: dict[str, Path] = {}
    for split in ("train", "dev", "test"):
        where = getattr(spec.data, split)
        if where:
            splits[split] = examples_of(spec, read_records(where, root, spec.format), split)
            if not where.startswith("hf:"):
                files[split] = resolve_path(where, root)
    if "test" not in splits and spec.test_fraction:
        pool = list(splits["train"])
        random.Random(HOLDOUT_SEED).shuffle(pool)
        n_test = int(len(pool) * spec.test_fraction)
        splits["test"], splits["train"] = pool[:n_test], pool[n_test:]
    return Task(spec, splits, origin, files)


def task_is_generative(task: Any) -> bool:
    """Whether `task` (a Task, a built-in name or a task file) has a text answer; a task that cannot be
    read here is not (loading it will say why)."""
    if isinstance(task, Task):
        return task.is_generative
    if not isinstance(task, (str, Path)):
        return False
    if is_family_name(str(task)):
        return True
    try:
        return load_spec(str(task))[0].is_generative
    except PromptTuneError:
        return False

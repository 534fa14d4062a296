"""Built-in generative task families, named `<family>:<member>` and built from the files in --data-dir.

- `ii:<task>`: an instruction-induction task (Honovich et al., 2022, as shipped by APE): train on
  `<task>.induce.json`, test on `<task>.execute.json`, template "Input: {input}\\nOutput:", target
  " {output}", greedy up to 16 new tokens (more for the long answers of negation and letters_list), stop at a
  newline. The metric is the one APE scores the task with: exact_match (SQuAD-normalised), `contains` for
  synonyms, `exact_set` for taxonomy_animal. Translation tasks also accept every one of
  `possible_translations` (APE's answer list; `output` is trained on). cause_and_effect reads with the
  `cause-effect` format: the two sentences as the input, in a hash-fixed order, and the cause as the answer.
- `mit-movies:<slot>`: MIT Movies slot filling: train/valid/test with the `bio` format, template
  "Sentence: {query}\\n<Slot>:", target " {<slot>}" (several spans joined " | "), metrics f1 then
  exact_match, and only the queries that have the slot (`keep_rows_with`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .loaders import read_records, resolve_path
from .spec import TaskSpec, validate_spec

II_DIR = "instruction-induction"
MIT_MOVIES = "mit-movies"
FAMILIES = {"ii": "ii:<task>", "mit-movies": "mit-movies:<slot>"}
# APE's scoring (its TASK_TO_METRIC) for the tasks that do not use exact match
II_METRIC = {"synonyms": "contains", "taxonomy_animal": "exact_set"}
# answers longer than 16 tokens (negation: up to 31 SmolLM2 tokens, letters_list: 15)
II_MAX_NEW_TOKENS = {"negation": 48, "letters_list": 24}
GENERATION = {"max_new_tokens": 16, "stop": ["\n"]}


def builtin_task_families() -> list[str]:
    """The families' name patterns, for help texts."""
    return list(FAMILIES.values())


def is_family_name(name: str) -> bool:
    family, sep, member = name.partition(":")
    return bool(sep) and family in FAMILIES


def family_spec(name: str, data_dir: Path | None) -> TaskSpec:
    """The spec of a `<family>:<member>` task; an unknown member lists the known ones from the data."""
    family, _, member = name.partition(":")
    raw = _ii(member, data_dir) if family == "ii" else _mit_movies(member, data_dir)
    return validate_spec(raw, f"built-in task {name}")


def ii_tasks(data_dir: Path | None) -> list[str]:
    """The instruction-induction tasks whose induce and execute files are both in the data dir."""
    root = resolve_path(II_DIR, data_dir)
    if not root.is_dir():
        hint = "" if data_dir else " (pass --data-dir)"
        raise DataError(f"no instruction-induction data: {root} is not a directory{hint}")
    return sorted(p.name.removesuffix(".induce.json") for p in root.glob("*.induce.json")
                  if p.with_name(p.name.replace(".induce.", ".execute.")).exists())


def _ii(task: str, data_dir: Path | None) -> dict[str, Any]:
    known = ii_tasks(data_dir)
    if task not in known:
        raise ConfigError(f"--task 'ii:{task}': no such instruction-induction task in "
                          f"{resolve_path(II_DIR, data_dir)} (known: {', '.join(known) or 'none'})")
    raw: dict[str, Any] = {
        "name": f"ii:{task}",
        "description": f"instruction induction '{task}' (APE's induce / execute split)",
        "data": {"train": f"{II_DIR}/{task}.induce.json", "test": f"{II_DIR}/{task}.execute.json"},
        "template": "Input: {input}\nOutput:",
        "target": " {output}",
        "metric": [II_METRIC.get(task, "exact_match")],
        "generation": GENERATION | {"max_new_tokens": II_MAX_NEW_TOKENS.get(task, 16)},
    }
    if task.startswith("translation_"):
        raw["also_accept"] = [" {possible_translations}"]
    if task == "cause_and_effect":
        raw["format"] = "cause-effect"
    return raw


def mit_movies_slots(data_dir: Path | None) -> list[str]:
    """The slot types the MIT Movies training queries hold."""
    rows = read_records(f"{MIT_MOVIES}/train", data_dir, "bio")
    return sorted({slot for cols, _ in rows for slot in cols} - {"query"})


def _mit_movies(slot: str, data_dir: Path | None) -> dict[str, Any]:
    known = mit_movies_slots(data_dir)
    if slot not in known:
        raise ConfigError(f"--task 'mit-movies:{slot}': no such slot in the MIT Movies data (slots: "
                          f"{', '.join(known)})")
    return {
        "name": f"mit-movies:{slot}",
        "description": f"MIT Movies slot filling: the {slot.replace('_', ' ')} a movie query names",
        "data": {"train": f"{MIT_MOVIES}/train", "dev": f"{MIT_MOVIES}/valid", "test": f"{MIT_MOVIES}/test"},
        "format": "bio",
        "template": "Sentence: {query}\n" + slot.replace("_", " ").capitalize() + ":",
        "target": f" {{{slot}}}",
        "metric": ["f1", "exact_match"],
        "keep_rows_with": [slot],
        "generation": dict(GENERATION),
    }

"""Generative tasks (the answer is text): the schema, the built-in families on the real data, the few-shot
draw, and the one-line errors every bad task file gives."""

from __future__ import annotations

import json
import re

import pytest

from prompttune.errors import ConfigError, DataError
from prompttune.tasks import Example, Task, builtin_task_families, builtin_tasks, load_spec, load_task
from prompttune.tasks.spec import validate_spec

II_TEMPLATE = "Input: {input}\nOutput:"


def test_instruction_induction_task_loads_with_its_template_target_and_metric(data_dir):
    task = load_task("ii:singular_to_plural", data_dir)
    assert task.is_generative and task.labels == [] and task.spec.verbalizer is None
    assert len(task.split("train")) == 1943 and len(task.split("test")) == 100 and task.eval_split_name == "test"
    ex = task.split("test")[0]
    assert task.render(ex) == "Input: end\nOutput:" and ex.label == "" and ex.answers == (" ends",)
    assert task.target_text(ex) == " ends" and ex.origin.endswith("singular_to_plural.execute.json:examples.1")
    assert [name for name, _ in task.metrics] == ["exact_match"] and task.primary_metric == "exact_match"
    assert task.metrics[0][1]("Ends.", ex.answers) == 1.0
    assert task.generation.max_new_tokens == 16 and task.generation.stop == ["\n"]
    with pytest.raises(ConfigError, match="generative: it has a target, not a verbalizer"):
        task.words()


def test_translation_accepts_every_possible_translation_and_trains_on_the_output(data_dir):
    task = load_task("ii:translation_en-de", data_dir)
    raw = json.loads((data_dir / "instruction-induction" / "translation_en-de.execute.json").read_text())
    row = raw["examples"]["1"]
    ex = task.split("test")[0]
    assert task.target_text(ex) == " " + row["output"]
    assert set(ex.answers) == {" " + t for t in row["possible_translations"]} | {" " + row["output"]}
    assert len(ex.answers) == len(set(ex.answers))  # the output is also in the list: not repeated
    assert task.metrics[0][1]("Ort", ex.answers) == 1.0  # another right translation


def test_cause_and_effect_asks_for_the_cause_of_two_sentences_in_a_fixed_mixed_order(data_dir):
    task = load_task("ii:cause_and_effect", data_dir)
    train = task.split("train")
    assert all(ex.fields["input"].startswith("Sentence 1: ") and ex.answers[0].strip() in ex.fields["input"]
               for ex in train)
    cause_first = sum(ex.fields["input"].startswith("Sentence 1: " + ex.answers[0].strip()) for ex in train)
    assert 0 < cause_first < len(train)
    again = load_task("ii:cause_and_effect", data_dir).split("train")
    assert [ex.fields for ex in again] == [ex.fields for ex in train]


def test_ape_metrics_and_longer_answers_where_the_task_needs_them(data_dir):
    assert load_task("ii:synonyms", data_dir).primary_metric == "contains"
    taxonomy = load_task("ii:taxonomy_animal", data_dir)
    assert taxonomy.primary_metric == "exact_set"
    assert taxonomy.metrics[0][1]("bear, beetle", [" beetle, bear"]) == 1.0
    assert load_task("ii:negation", data_dir).generation.max_new_tokens == 48


def test_mit_movies_slot_keeps_only_queries_with_the_slot(data_dir):
    task = load_task("mit-movies:director", data_dir)
    assert set(task.splits) == {"train", "dev", "test"}
    assert len(task.split("train")) == 1561  # the train queries that name a director
    ex = next(e for e in task.split("test") if e.origin.endswith("mit-movies/test:2"))
    assert task.render(ex).startswith("Sentence: what soviet science fiction classic")
    assert task.render(ex).endswith("\nDirector:") and ex.answers == (" steven soderbergh",)
    assert all(e.answers[0].strip() for split in task.splits.values() for e in split)
    assert [name for name, _ in task.metrics] == ["f1", "exact_match"] and task.primary_metric == "f1"
    assert load_task("mit-movies:character_name", data_dir).render(ex).endswith("\nCharacter name:")


def test_family_names_list_their_members_when_unknown(data_dir, tmp_path):
    assert builtin_task_families() == ["ii:<task>", "mit-movies:<slot>"]
    assert not any(":" in name for name in builtin_tasks())
    with pytest.raises(ConfigError, match=r"'ii:plural'.*\(known: active_to_passive, antonyms, .*word_in_context\)"):
        load_task("ii:plural", data_dir)
    with pytest.raises(ConfigError, match=r"'mit-movies:budget': no such slot.*\(slots: actor, award, .*year\)"):
        load_task("mit-movies:budget", data_dir)
    with pytest.raises(DataError, match="no instruction-induction data"):
        load_task("ii:sum", tmp_path)
    with pytest.raises(ConfigError, match=r"neither a built-in task \(.*ii:<task>, mit-movies:<slot>\)"):
        load_task("nosuch", data_dir)
    spec, origin = load_spec("ii:sum", data_dir)
    assert spec.is_generative and origin == "ii:sum"


def _write(tmp_path, rows, body: str):
    """A task file over a JSON-lines file of `rows`; `body` is the YAML after the name and data lines."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "gen.yaml"
    path.write_text(f"name: gen\ndata: {{train: {data}}}\n{body}")
    return path


ROWS = [{"question": f"q{i}", "answer": f"a{i}", "aliases": [f"b{i}", f"a{i}"]} for i in range(30)]


def test_a_yaml_generative_task_with_fields_lists_options_and_kept_rows(tmp_path):
    rows = ROWS + [{"question": "no answer", "answer": "", "aliases": []}]
    path = _write(tmp_path, rows, 'fields: {q: question}\ntemplate: "Q: {q}\\nA:"\ntarget: " {answer}"\n'
                  'also_accept: [" {aliases}"]\nkeep_rows_with: [answer]\n'
                  "metric: [f1, {name: exact_match, lower: false}]\ndev_metric: exact_match\n"
                  'generation: {max_new_tokens: 8, stop: ["\\n", "."]}\n')
    task = load_task(str(path))
    train = task.split("train")
    assert len(train) == 30 and train[0].fields == {"q": "q0"} and train[0].answers == (" a0", " b0")
    assert [name for name, _ in task.metrics] == ["f1", "exact_match(lower=False)"]
    assert task.spec.dev_metric == "exact_match(lower=False)" and task.generation.stop == ["\n", "."]
    # data read through a library (no file) is hashed by its examples: the answers are part of them
    bare = Task(task.spec, {"train": train}, "x")
    changed = Task(task.spec, {"train": [Example(train[0].fields, "", train[0].origin, (" z",)), *train[1:]]}, "x")
    assert bare.data_identity()["train"]["sha256"] != changed.data_identity()["train"]["sha256"]


def test_few_shot_draws_k_in_all_seeded_and_disjoint(data_dir, tmp_path):
    task = load_task(str(_write(tmp_path, ROWS, 'template: "{question}"\ntarget: " {answer}"\n')))
    a, b = task.few_shot(8, seed=3, dev_shots=5), task.few_shot(8, seed=3, dev_shots=5)
    assert len(a.train) == 8 and len(a.dev) == 5
    assert [e.origin for e in a.train + a.dev] == [e.origin for e in b.train + b.dev]
    assert {e.origin for e in a.train} != {e.origin for e in task.few_shot(8, seed=4).train}
    assert not {e.origin for e in a.train} & {e.origin for e in a.dev}  # dev from what train left
    with pytest.raises(DataError, match="train has 30 examples, fewer than --shots 31"):
        task.few_shot(31, seed=0)
    with pytest.raises(DataError, match="train after the 20 shots .* has 10 examples, fewer than --dev-shots 11"):
        task.few_shot(20, seed=0, dev_shots=11)
    movies = load_task("mit-movies:director", data_dir)
    fs = movies.few_shot(16, seed=0)
    dev_origins = {e.origin for e in movies.split("dev")}
    assert len(fs.train) == 16 and len(fs.dev) == 16 and {e.origin for e in fs.dev} <= dev_origins
    with pytest.raises(DataError, match="dev has 181 examples, fewer than --dev-shots 200"):
        movies.few_shot(4, seed=0, dev_shots=200)


HEAD = 'template: "Input: {input}\\nOutput:"\n'
BAD = [  # (YAML after name/data/template, the line the error names, the message)
    ('verbalizer: {a: " a", b: " b"}\ntarget: " {output}"\n', 5,
     r"field 'target': a task has a verbalizer \(classification\) or a target \(generative\), not both"),
    ("description: none\n", 1, "field 'target': missing: a task needs a verbalizer .* or a target"),
    ('target: " {output}"\nmetric: [exact_match, bleurt]\n', 5,
     r"field 'metric.1': metric 'bleurt' is not known \(known: bleu, chrf, contains, exact_match, .*\)"),
    ('target: " {output}"\nmetric:\n  - f1\n  - name: python:no_such_module:f\n', 7,
     "field 'metric.1': metric 'python:no_such_module:f' does not import"),
    ('target: "   "\n', 4, "field 'target': is empty: it must name a data column"),
    ('target: " output"\n', 4, "field 'target': names no field: it must name a data column"),
    ('target: " {output}"\ngeneration:\n  stop: ["\\n", ""]\n', 6,
     "field 'generation.stop.1': an empty stop string"),
    ('target: " {output}"\ngeneration:\n  max_new_tokens: 0\n', 6,
     "field 'generation.max_new_tokens': Input should be greater than or equal to 1"),
    ('verbalizer: {a: " a", b: " b"}\nmetric: f1\n', 5,
     "field 'metric': is only for generative tasks .*; this one has a verbalizer$"),
    ('verbalizer: {a: " a", b: " b"}\ngeneration: {max_new_tokens: 4}\n', 5, "field 'generation': is only for"),
    ('verbalizer: {a: " a", b: " b"}\ndev_metric: nll\n', 5, "field 'dev_metric': is only for generative"),
    ('target: " {output}"\nmetric: f1\ndev_metric: exact_match\n', 6,
     r"field 'dev_metric': 'exact_match' is not one of this task's metrics \(choose: nll, f1\)"),
    ('target: " {input}"\n', 3, r"field 'template': uses \{input\}, which the target renders"),
]


@pytest.mark.parametrize(("body", "line", "message"), BAD, ids=[
    "both", "neither", "unknown-metric", "python-metric", "empty-target", "target-no-field", "empty-stop",
    "max-new-tokens", "metric-on-classification", "generation-on-classification", "dev-metric-on-classification",
    "dev-metric-unknown", "answer-in-input"])
def test_each_bad_task_file_is_one_line_naming_file_line_and_key(tmp_path, body, line, message):
    path = _write(tmp_path, ROWS, HEAD + body)
    with pytest.raises(ConfigError) as caught:
        load_task(str(path))
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"{path}:{line}: ")
    assert re.search(message, text), text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "gen.yaml"]  # nothing written


def test_bad_data_for_a_target_names_the_row(tmp_path):
    rows = [{"input": "x", "output": "y"}, {"input": "x2", "out": "y2"}]
    with pytest.raises(DataError, match=r"d\.jsonl:2: no column 'output' for target field '\{output\}' "
                                        r"\(columns: input, out\)"):
        load_task(str(_write(tmp_path, rows, HEAD + 'target: " {output}"\n')))
    rows = [{"input": "x", "a": ["1"], "b": ["2"]}]
    with pytest.raises(DataError, match=r"d\.jsonl:1: target ' \{a\} \{b\}' takes lists from both"):
        load_task(str(_write(tmp_path, rows, HEAD + 'target: " {a} {b}"\n')))
    rows = [{"input": "x", "a": []}]
    with pytest.raises(DataError, match=r"d\.jsonl:1: the target ' \{a\}' renders no answer"):
        load_task(str(_write(tmp_path, rows, HEAD + 'target: " {a}"\n')))


def test_built_in_errors_name_the_task_and_classification_is_unchanged(data_dir):
    sst2 = load_task("sst2", data_dir)
    assert not sst2.is_generative and sst2.spec.metric == [] and sst2.metrics == []
    assert sst2.primary_metric == "accuracy" and sst2.labels == ["0", "1"]
    ex = sst2.split("train")[0]
    assert ex.answers == () and ex.label in ("0", "1")
    with pytest.raises(ConfigError, match="no target text"):
        sst2.target_text(ex)
    with pytest.raises(ConfigError, match=r"^built-in task x: field 'target': is empty"):
        validate_spec({"name": "x", "data": {"train": "a"}, "template": "{a}", "target": ""}, "built-in task x")

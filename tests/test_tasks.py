"""Task files, built-in tasks, few-shot sampling, metrics, and the errors bad data gives."""

from __future__ import annotations

import json

import pytest

from prompttune.errors import ConfigError, DataError
from prompttune.tasks import accuracy, builtin_tasks, load_task, macro_f1

RTE_YAML = """\
name: rte
data:                      # paths relative to --data-dir (or absolute), or hf:<dataset>[/<config>]:<split>
  train: rte/train.jsonl   # .jsonl, .csv, .tsv by extension
  dev: rte/val.jsonl
fields: {premise: premise, hypothesis: hypothesis, label: label}   # template name: column name
template: "{premise}\\nQuestion: {hypothesis} True or False?\\nAnswer:"
verbalizer: {entailment: " True", not_entailment: " False"}        # label value: word(s); a list gives several words
"""


def test_schema_from_the_issue_works_as_written(tmp_path, data_dir):
    path = tmp_path / "rte.yaml"
    path.write_text(RTE_YAML)
    task = load_task(str(path), data_dir)
    assert len(task.split("train")) == 2490 and len(task.split("dev")) == 277
    ex = task.split("train")[0]
    assert task.render(ex).endswith("True or False?\nAnswer:") and ex.label == "not_entailment"


@pytest.mark.parametrize("name,classes", [("sst2", 2), ("trec", 6), ("rte", 2), ("agnews", 4), ("tweets", 3),
                                                ("tweets-polarity", 2)])
def test_builtin_tasks_load(name, classes, data_dir):
    assert name in builtin_tasks()
    task = load_task(name, data_dir)
    assert len(task.labels) == classes
    assert task.eval_split_name in task.splits
    assert all(ex.label in task.labels for ex in task.split("train")[:200])


def test_skip_labels_leave_rows_out_and_may_not_be_verbalized(tmp_path):
    """tweets-polarity is the 3-class tweets corpus with its neutral rows left out, not an error."""
    polar, full = load_task("tweets-polarity", None), load_task("tweets", None)
    assert len(polar.split("train")) + len(polar.split("test")) == sum(
        ex.label != "neutral" for split in ("train", "test") for ex in full.split(split))
    bad = tmp_path / "bad.yaml"
    bad.write_text('name: x\ndata: {train: a.csv}\ntemplate: "{t}"\nverbalizer: {a: " a", b: " b"}\n'
                   "skip_labels: [a]\n")
    with pytest.raises(ConfigError, match="skip_labels.*lists a, which the verbalizer also has"):
        load_task(str(bad), None)


def test_few_shot_is_seeded_per_class_and_disjoint(sst2, data_dir):
    a, b = sst2.few_shot(8, seed=3), sst2.few_shot(8, seed=3)
    assert [e.origin for e in a.train] == [e.origin for e in b.train]
    assert {e.origin for e in a.train} != {e.origin for e in sst2.few_shot(8, seed=4).train}
    assert sorted(sst2.label_index(e) for e in a.train) == [0] * 8 + [1] * 8
    trec = load_task("trec", data_dir)  # no dev split: dev comes from train, disjoint from the shots
    fs = trec.few_shot(4, seed=0)
    assert len(fs.train) == 24 and len(fs.dev) == 24
    assert not {e.origin for e in fs.train} & {e.origin for e in fs.dev}


def test_holdout_test_split_is_fixed_across_seeds(data_dir):
    a, b = load_task("agnews", data_dir), load_task("agnews", data_dir)
    assert [e.origin for e in a.split("test")] == [e.origin for e in b.split("test")]
    assert not {e.origin for e in a.split("test")} & {e.origin for e in a.split("train")}


def test_metrics():
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    # class 0: tp 2, fp 0, fn 1 -> 0.8 ; class 1: tp 1, fp 1, fn 0 -> 2/3
    assert macro_f1([0, 1, 1, 0], [0, 1, 0, 0], 2) == pytest.approx((0.8 + 2 / 3) / 2)


def _task_file(tmp_path, rows, template="{text}\nLabel:", verbalizer='{a: " yes", b: " no"}', name="t"):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ndata: {{train: {data}}}\ntemplate: \"{template}\"\nverbalizer: {verbalizer}\n")
    return path


def test_bad_data_errors_name_file_line_and_field(tmp_path):
    rows = [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}, {"txt": "z", "label": "a"}]
    with pytest.raises(DataError, match=r"d\.jsonl:3: no column 'text' for template field '\{text\}'"):
        load_task(str(_task_file(tmp_path, rows)))
    rows = [{"text": "x", "label": "a"}, {"text": "y", "label": "c"}]
    with pytest.raises(DataError, match=r"d\.jsonl:2: label 'c' is not in the verbalizer \(labels: a, b\)"):
        load_task(str(_task_file(tmp_path, rows)))
    with pytest.raises(DataError, match="no examples"):
        load_task(str(_task_file(tmp_path, [])))
    rows = [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}]
    with pytest.raises(DataError, match=r"d\.jsonl:1: no column 'title'"):
        load_task(str(_task_file(tmp_path, rows, template="{title}\\nLabel:")))
    task = load_task(str(_task_file(tmp_path, rows * 3)))
    with pytest.raises(DataError, match="label 'a' has 3 examples in train, fewer than --shots 4"):
        task.few_shot(4, seed=0)
    (tmp_path / "broken.jsonl").write_text('{"text": "x", "label": "a"}\n{"text": oops}\n')
    path = tmp_path / "broken.yaml"
    path.write_text(f"name: b\ndata: {{train: {tmp_path / 'broken.jsonl'}}}\ntemplate: '{{text}}'\n"
                    "verbalizer: {a: ' yes', b: ' no'}\n")
    with pytest.raises(DataError, match=r"broken\.jsonl:2: not valid JSON"):
        load_task(str(path))


def test_bad_task_files(tmp_path, data_dir):
    with pytest.raises(DataError, match="does not exist"):
        load_task("sst2", tmp_path)
    with pytest.raises(ConfigError, match="neither a built-in task"):
        load_task("nosuchtask", data_dir)
    with pytest.raises(ConfigError, match="does not exist"):
        load_task(str(tmp_path / "missing.yaml"), data_dir)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata:\n  train: a.jsonl\n template: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_task(str(bad))
    bad.write_text("name: x\ndata: {train: a.jsonl}\ntemplate: 'no fields here'\nverbalizer: {a: ' y', b: ' n'}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: field 'template'.*names no field"):
        load_task(str(bad))
    bad.write_text("name: x\ndata: {train: a.jsonl}\ntemplate: '{t}'\nverbalizer: {a: ' y', b: ' n'}\nshots: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:5: field 'shots': Extra inputs are not permitted"):
        load_task(str(bad))

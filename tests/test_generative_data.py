"""Readers for the generative tasks' data: instruction induction (APE layout) and MIT Movies (BIO)."""

from __future__ import annotations

import json

import pytest

from prompttune.errors import DataError
from prompttune.tasks.loaders import read_records


def test_instruction_induction_files_read_with_their_lists_of_answers(data_dir):
    train = read_records("instruction-induction/singular_to_plural.induce.json", data_dir, None)
    held = read_records("instruction-induction/singular_to_plural.execute.json", data_dir, None)
    assert len(held) == 100 and len(train) > 1000
    assert held[0][0]["input"] == "end" and held[0][0]["output"] == "ends"
    assert held[0][1].endswith("singular_to_plural.execute.json:examples.1")
    row = read_records("instruction-induction/translation_en-de.execute.json", data_dir, None)[0][0]
    assert isinstance(row["possible_translations"], list) and row["output"] in row["possible_translations"]
    effect = read_records("instruction-induction/cause_and_effect.execute.json", data_dir, None)[0][0]
    assert set(effect) == {"cause", "effect"}


def test_a_json_object_without_examples_is_still_read_as_json_lines(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('{"text": "a", "label": "1"}\n{"text": "b", "label": "0"}\n')
    assert [r for r, _ in read_records(str(path), None, None)] == [{"text": "a", "label": "1"},
                                                                    {"text": "b", "label": "0"}]
    path.write_text(json.dumps({"examples": {"1": "not an object"}}))
    with pytest.raises(DataError, match=r"rows.json:examples.1: each example must be a JSON object"):
        read_records(str(path), None, None)


def test_mit_movies_slots_are_read_from_bio_tags(data_dir):
    rows = read_records("mit-movies/test", data_dir, "bio")
    assert len(rows) == 1953
    second, origin = rows[1]
    assert origin.endswith("mit-movies/test:2")
    assert second["query"].startswith("what soviet science fiction classic")
    assert second["director"] == "steven soderbergh" and second["actor"] == "george clooney"
    assert second["genre"] == "soviet science fiction"
    assert sum("director" in r for r, _ in read_records("mit-movies/train", data_dir, "bio")) == 1561


def test_a_bad_bio_line_names_its_file_and_line(tmp_path):
    path = tmp_path / "bad"
    path.write_text("what:O movie:O\nwhat:O movie:X-Genre <=> <NULL>\n")
    with pytest.raises(DataError, match=r"bad:2: expected word:TAG with a BIO tag, got 'movie:X-Genre'"):
        read_records(str(path), None, "bio")


def test_cause_effect_format_poses_the_pair_as_ape_does(data_dir, tmp_path):
    rows = read_records("instruction-induction/cause_and_effect.induce.json", data_dir, "cause-effect")
    assert len(rows) == 26
    for cols, _ in rows:
        assert cols["output"] == cols["cause"]
        assert cols["input"] in (f"Sentence 1: {cols['cause']} Sentence 2: {cols['effect']}",
                                 f"Sentence 1: {cols['effect']} Sentence 2: {cols['cause']}")
    path = tmp_path / "ce.json"
    path.write_text(json.dumps({"examples": {"1": {"cause": "It rained."}}}))
    with pytest.raises(DataError, match=r"ce.json:examples.1: expected 'cause' and 'effect' texts; no effect"):
        read_records(str(path), None, "cause-effect")


def test_json_lines_keep_list_values_as_lists(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"q": "a", "answers": ["x", "y"], "n": 3}\n')
    assert read_records(str(path), None, None)[0][0] == {"q": "a", "answers": ["x", "y"], "n": "3"}

"""Metrics of generative tasks against hand-computed values and against their reference libraries."""

from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from prompttune.errors import ConfigError
from prompttune.llm.judge import judge_prompt, parse_score
from prompttune.tasks.answer_metrics import get_metric, metric_label, metric_names, normalize


def same_first_letter(prediction: str, answers: list[str]) -> float:
    """A user metric, named as python:test_answer_metrics:same_first_letter."""
    return float(any(prediction[:1].lower() == a[:1].lower() for a in answers))


def test_exact_match_normalises_as_squad_and_each_step_can_be_turned_off():
    em = get_metric("exact_match")
    assert normalize("  The  Cats, sat! ") == "cats sat"
    assert em("The cats.", ["cats"]) == 1.0 and em("dogs", ["cats", "dogs"]) == 1.0 and em("cat", ["cats"]) == 0.0
    assert get_metric("exact_match", lower=False)("Cats", ["cats"]) == 0.0
    assert get_metric("exact_match", punctuation=False)("cats.", ["cats"]) == 0.0
    assert get_metric("exact_match", articles=False)("the cats", ["cats"]) == 0.0
    assert get_metric("exact_match", whitespace=False)("cats ", ["cats"]) == 0.0


def test_contains_and_token_f1_take_the_best_answer():
    assert get_metric("contains")("I think it is Paris, France.", ["paris"]) == 1.0
    assert get_metric("contains")("London", ["paris", ""]) == 0.0  # an empty answer is never "contained"
    f1 = get_metric("f1")
    # prediction "steven soderbergh film" vs gold "steven soderbergh": P = 2/3, R = 1 -> F1 = 0.8
    assert f1("Steven Soderbergh film", ["george clooney", "steven soderbergh"]) == pytest.approx(0.8)
    assert f1("", [""]) == 1.0 and f1("x", [""]) == 0.0


def test_rouge_l_chrf_and_bleu_equal_their_libraries():
    pred, answers = "the cat sat on the mat", ["a cat was sitting on the mat", "the cat is on the mat"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert get_metric("rouge_l")(pred, answers) == pytest.approx(
        max(scorer.score(a, pred)["rougeL"].fmeasure for a in answers))
    assert get_metric("chrf")(pred, answers) == pytest.approx(sacrebleu.sentence_chrf(pred, answers).score / 100)
    assert get_metric("bleu")(pred, answers) == pytest.approx(sacrebleu.sentence_bleu(pred, answers).score / 100)
    assert get_metric("chrf")(pred, [pred]) == pytest.approx(1.0)


def test_numeric_regex_and_json():
    num = get_metric("numeric")
    assert num("so the answer is 1,234.", ["1234"]) == 1.0 and num("12 then 13", ["12"]) == 0.0
    assert get_metric("numeric", tolerance=0.5)("3.4", ["3"]) == 1.0 and num("none", ["3"]) == 0.0
    assert get_metric("regex", pattern=r"\d{4}")(" 1999 ", []) == 1.0
    assert get_metric("regex")("cats", [r"cats?"]) == 1.0 and get_metric("regex")("dog", [r"cats?"]) == 0.0
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    assert get_metric("json")('{"a": 1}', []) == 1.0 and get_metric("json")("{a: 1}", []) == 0.0
    assert get_metric("json", schema=schema)('{"name": "x"}', []) == 1.0
    assert get_metric("json", schema=schema)('{"name": 3}', []) == 0.0


def test_user_metrics_and_bad_names_or_options_are_one_clear_line():
    user = get_metric("python:test_answer_metrics:same_first_letter")  # tests/ is on sys.path
    assert user("Paris", ["prague", "rome"]) == 1.0 and user("Oslo", ["rome"]) == 0.0
    with pytest.raises(ConfigError, match="metric 'python:no_such_module:f' does not import"):
        get_metric("python:no_such_module:f")
    with pytest.raises(ConfigError, match="metric 'bleurt' is not known"):
        get_metric("bleurt")
    with pytest.raises(ConfigError, match="metric 'exact_match': bad options"):
        get_metric("exact_match", casefold=True)
    assert {"exact_match", "exact_set", "contains", "f1", "rouge_l", "chrf", "bleu", "numeric", "regex", "json",
            "llm_judge"} <= set(
        metric_names())


def test_exact_set_labels_and_user_metric_options():
    es = get_metric("exact_set")
    assert es("bear, beetle.", [" beetle, bear"]) == 1.0 and es("bear", ["beetle, bear"]) == 0.0
    assert metric_label("exact_match", {}) == "exact_match"
    assert metric_label("exact_match", {"lower": False, "articles": True}) == "exact_match(articles=True,lower=False)"
    assert metric_label("llm_judge", {"rubric": "r", "client": object()}) == "llm_judge(rubric=r)"
    strict = get_metric("python:test_answer_metrics:first_letter_at_least", minimum=2)
    assert strict("Paris", ["prague"]) == 0.0 and get_metric("python:test_answer_metrics:first_letter_at_least")(
        "Paris", ["prague"]) == 1.0


def first_letter_at_least(prediction: str, answers: list[str], minimum: int = 1) -> float:
    """A user metric with an option: `minimum` leading letters must agree."""
    return float(any(prediction[:minimum].lower() == a[:minimum].lower() for a in answers))


def test_llm_judge_prompt_and_score_parsing_are_plain_functions():
    prompt = judge_prompt("Is it the plural?", " games ", [" games", " game-s"], (1, 10))
    assert "rubric:\nIs it the plural?" in prompt and "- games\n- game-s" in prompt
    assert "Answer to grade:\ngames" in prompt and prompt.endswith("from 1 (worst) to 10 (best) and nothing else.")
    assert "Reference" not in judge_prompt("r", "", [], (1, 5)) and "(empty)" in judge_prompt("r", "", [], (1, 5))
    assert parse_score("Score: 7/10", (1, 10)) == pytest.approx(6 / 9)
    assert parse_score("10", (1, 10)) == 1.0 and parse_score("I'd say 1.", (1, 10)) == 0.0
    assert parse_score("0 then 12 then 3", (1, 10)) == pytest.approx(2 / 9)  # the first one on the scale
    assert parse_score("gpt4 says -3, no idea", (1, 10)) is None and parse_score("", (1, 5)) is None
    with pytest.raises(ConfigError, match="'llm_judge': option 'rubric' must be a non-empty text"):
        get_metric("llm_judge", model="m")
    with pytest.raises(ConfigError, match="'llm_judge' needs a 'model'"):
        get_metric("llm_judge", rubric="r")
    with pytest.raises(ConfigError, match="option 'scale' must be two integers"):
        get_metric("llm_judge", rubric="r", model="m", scale=[5, 1])
    with pytest.raises(ConfigError, match="metric 'llm_judge': bad options"):
        get_metric("llm_judge", rubric="r", model="m", temperature=1)


def test_llm_judge_makes_one_counted_call_to_a_local_chat_model(backbone):
    from prompttune.llm import LLM, LocalChatBackend

    llm = LLM(LocalChatBackend("smollm2-135m", backbone=backbone))
    judge = get_metric("llm_judge", rubric="Is the answer the plural of the word 'game'?", client=llm)
    score = judge(" games", [" games"])
    assert isinstance(score, float) and 0.0 <= score <= 1.0
    assert llm.calls == 1 and llm.ledger[0]["purpose"] == "llm_judge"
    assert judge.unparsable in (0, 1) and (judge.unparsable == 0 or score == 0.0)


def test_regex_answers_are_patterns_stripped_like_the_prediction():
    regex = get_metric("regex")
    assert regex("cats", [" cats"]) == 1.0 and regex(" c+ats\n", [" c\\+ats"]) == 1.0
    assert regex("dogs", [" cats"]) == 0.0


def test_a_metric_with_long_or_spaced_options_gets_a_short_label_that_fits_key_value_lines():
    rubric = "Is the answer a correct, fluent plural?"
    label = metric_label("llm_judge", {"rubric": rubric, "base_url": "http://x/v1"})
    assert label.startswith("llm_judge(") and " " not in label and "," not in label
    assert len(label) == len("llm_judge") + 10  # name(8 hex)
    assert label == metric_label("llm_judge", {"base_url": "http://x/v1", "rubric": rubric})

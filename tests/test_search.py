"""Discrete and black-box prompt search (issue #7): the engine is exact, every method beats the plain
template on held-out TREC questions with a fixed seed, budgets hold, searches resume, text prompts
port to Gemma, and bad input fails cleanly."""

from __future__ import annotations

import json

import pytest
import torch

import prompttune
from prompttune.prompts.hard import HardPrompt
from prompttune.search.engine import CandidateScorer

SHOTS = 4  # per class: 24 train and 24 dev TREC questions
HELD_OUT = 120  # held-out TREC test questions every learning test scores on
TREC = {"shots": SHOTS, "seed": 0, "eval_limit": HELD_OUT, "progress": False}


@pytest.fixture(scope="module")
def trec(data_dir):
    from prompttune.tasks import load_task

    return load_task("trec", data_dir)


@pytest.fixture(scope="module")
def trec_zero_shot(backbone, data_dir, tmp_path_factory) -> float:
    report = prompttune.train("zero-shot", backbone, "trec", data_dir, out=tmp_path_factory.mktemp("zs") / "r", **TREC)
    return report.test.accuracy


@torch.no_grad()
def test_engine_scores_equal_plain_scoring_of_the_rendered_text(backbone, sst2):
    """Cached example prefixes (candidate after the input) and shared prompt prefixes (before it) give the
    scores of tokenizing and scoring each rendered text whole, for single- and multi-token label words."""
    examples = sst2.split("dev")[:4]
    template = sst2.spec.template
    prompts = [
        HardPrompt.build(template),
        HardPrompt.build(template, separator=" {so} it was"),
        HardPrompt.build(template, separator="!!"),
        HardPrompt.build(template, instruction="Is it good?"),
        HardPrompt("Movie: {sentence}\nVerdict:"),
    ]
    for words in ([[" negative"], [" positive"]], [[" not good at all"], [" positive", " great"]]):
        labels = backbone.label_words(words)
        scorer = CandidateScorer(backbone, sst2, labels, examples)
        some = prompts if len(words[0]) == 1 else prompts[1:4]  # multi-token words: one of each kind
        for prompt, fast in zip(some, scorer.score(some), strict=True):
            ids = backbone.tokenize(scorer.render(prompt.template))
            reference = backbone.score(ids, labels)
            assert torch.allclose(fast, reference, atol=1e-4), (prompt, (fast - reference).abs().max())


SEARCHES = {
    # random search needs more than 4 shots per class to find a separator that holds up on held-out data:
    "random-separators": {"budget": 2000, "shots": 8, "eval_limit": 200},
    "autoprompt": {"budget": 2000, "iterations": 6, "n_candidates": 8},
    "pez": {"steps": 24, "eval_every": 8},
    "bbt": {"budget": 1200, "intrinsic_dim": 50, "popsize": 8},
    "edit-search": {"budget": 1000},
    "evolution": {"budget": 1500, "population": 6, "position": "separator"},
    "rlprompt": {"budget": 1500, "samples": 6},
    "prompt-boosting": {"n_prompts": 8},
}


@pytest.mark.parametrize("method", sorted(SEARCHES))
def test_search_beats_the_plain_template_on_held_out_questions(method, backbone, data_dir, trec_zero_shot, tmp_path):
    params = dict(SEARCHES[method])
    run = {**TREC, "shots": params.pop("shots", SHOTS), "eval_limit": params.pop("eval_limit", HELD_OUT)}
    if run["shots"] != SHOTS:  # its own floor: zero-shot on the same held-out questions
        trec_zero_shot = prompttune.train(
            "zero-shot", backbone, "trec", data_dir, out=tmp_path / "zs", **run
        ).test.accuracy
    report = prompttune.train(method, backbone, "trec", data_dir, out=tmp_path / method, **run, **params)
    info = report.meta["info"]
    assert report.test.n == run["eval_limit"]
    assert report.test.accuracy > trec_zero_shot, (
        method,
        report.test.accuracy,
        trec_zero_shot,
        report.meta.get("text_prompt"),
    )
    if "budget" in SEARCHES[method]:
        assert info["queries_used"] <= SEARCHES[method]["budget"]
        trace = report.meta["history"]
        assert trace and trace[-1]["queries"] <= info["queries_used"]
        assert [t["queries"] for t in trace] == sorted(t["queries"] for t in trace)  # plot-ready: score vs queries
    if report.meta["prompt_kind"] == "hard":  # a text prompt: the artifact is the template
        template = report.meta["text_prompt"]["template"]
        assert "{question}" in template
        predictor = prompttune.load(report.out_dir, model=backbone)
        assert predictor.template == template


def test_select_scores_every_candidate_and_picks_by_the_criterion(backbone, data_dir, tmp_path, trec_zero_shot):
    candidates = [
        "Question: {question}\nAnswer type:",
        "What kind of thing does this question ask for? "
        "Answer with a number, a person, a location, an entity, a description or an abbreviation.",
        "{question}\nThe answer is a",
        "Q: {question}\nA: this asks for a",
    ]
    reports = {}
    for criterion in ("mi", "cbm", "entropy", "flatness", "accuracy"):
        reports[criterion] = prompttune.train(
            "select",
            backbone,
            "trec",
            data_dir,
            out=tmp_path / criterion,
            candidates=candidates,
            criterion=criterion,
            **{**TREC, "eval_limit": HELD_OUT if criterion == "accuracy" else 8},  # only its accuracy is asserted
        )
    rows = reports["mi"].meta["info"]["selection"]
    assert len(rows) == len(candidates) and all({"mi", "entropy", "cbm", "accuracy"} <= set(r) for r in rows)
    for criterion, report in reports.items():
        info = report.meta["info"]
        assert info["picked"] == max(
            range(len(rows)), key=lambda i: (info["selection"][i][criterion], info["selection"][i]["accuracy"])
        )
    flat = reports["flatness"].meta["info"]["selection"]
    assert all(r["flatness"] <= r["mi"] + 1e-6 for r in flat)  # MI minus a KL divergence, which is >= 0
    assert reports["flatness"].meta["info"]["queries_used"] == 2 * reports["mi"].meta["info"]["queries_used"]
    assert reports["accuracy"].test.accuracy > trec_zero_shot


def test_budget_is_exact_and_an_interrupted_search_resumes_where_it_stopped(backbone, data_dir, tmp_path):
    """Kill a search after its 2nd round, resume: same prompt and same trace as an uninterrupted run, and the
    budget is spent to the last affordable candidate, never beyond."""
    kwargs = dict(model=backbone, task="trec", data_dir=data_dir, **{**TREC, "eval_limit": 8})  # no accuracy checked
    for method, params in (
        ("random-separators", {"budget": 400, "n_candidates": 40, "round_size": 4}),
        ("bbt", {"budget": 500, "intrinsic_dim": 20, "popsize": 6}),
    ):
        whole = prompttune.train(method, out=tmp_path / f"{method}-whole", **kwargs, **params)
        rounds = []

        def crash(n, best, rounds=rounds):
            rounds.append(n)
            if len(rounds) == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            prompttune.train(method, out=tmp_path / f"{method}-cut", callbacks=[crash], **kwargs, **params)
        assert (tmp_path / f"{method}-cut" / "checkpoint.search.safetensors").exists()
        resumed = prompttune.train(method, out=tmp_path / f"{method}-cut", resume=True, **kwargs, **params)
        assert resumed.meta["history"] == whole.meta["history"]
        assert resumed.meta["info"] == whole.meta["info"]
        a = prompttune.load(whole.out_dir, model=backbone)
        b = prompttune.load(resumed.out_dir, model=backbone)
        assert (a.prompt is None and a.template == b.template) or torch.equal(a.prompt, b.prompt)
        used, budget = whole.meta["info"]["queries_used"], params["budget"]
        assert used <= budget
        if method == "random-separators":  # the budget, not the candidate list, ended the search: the 24 train
            # questions of one more candidate no longer fit in what the dev reserve (4 finalists x 24) left
            searched = whole.meta["history"][-1]["queries"]
            assert whole.meta["info"]["candidates_scored"] < 41 and 0 <= (budget - 4 * 24) - searched < 24


def test_a_hard_prompt_found_on_smollm2_evaluates_unchanged_on_gemma(backbone, data_dir, tmp_path):
    from prompttune.models import load_backbone
    from prompttune.tasks import load_task

    gemma = load_backbone("gemma3-270m", device="cpu")
    report = prompttune.train(
        "random-separators",
        backbone,
        "trec",
        data_dir,
        out=tmp_path / "rs",
        shots=SHOTS,
        eval_limit=60,
        progress=False,
        budget=600,
        n_candidates=8,
        port_to=[gemma],
    )
    port = report.meta["portability"][0]
    assert port["model"] == "gemma3-270m" and port["fingerprint"] == gemma.fingerprint and port["n"] == 60
    assert json.loads((tmp_path / "rs" / "prompt.json").read_text())["portability"] == report.meta["portability"]
    # "unchanged": the artifact's template text, rendered and scored on Gemma as it is
    task = load_task("trec", data_dir)
    few = task.few_shot(SHOTS, 0)
    held = prompttune.api.held_out(task, "test", few.train + few.dev, 60)
    text = HardPrompt.from_meta(report.meta["text_prompt"])
    assert prompttune.api.evaluate(gemma, task, held, text).accuracy == port["accuracy"]
    assert (
        prompttune.api.evaluate(gemma, task, held, HardPrompt(task.spec.template)).accuracy == port["template_accuracy"]
    )


@pytest.mark.parametrize(
    "method,params,expected",
    [
        ("select", ["-p", "candidates=[]"], "select needs candidate prompts.*the list is empty"),
        (
            "random-separators",
            ["--budget", "10"],
            "--budget 10 is smaller than one evaluation round of 'random-separators'.*pass at least --budget",
        ),
        ("bbt", ["--budget", "50"], "--budget 50 is smaller than one evaluation round of 'bbt'"),
        (
            "random-separators",
            ["-p", "source=words", "-p", "words_file=no-such-words.txt"],
            "word list no-such-words.txt does not exist",
        ),
        ("evolution", ["-p", "words_file=no-such-words.txt"], "word list no-such-words.txt does not exist"),
        ("autoprompt", ["--task", "EMPTY_WORD"], "verbalizer word '' for label 'b' tokenizes to nothing"),
        ("select", ["-p", "candidates=['{txt} Label:']"], r"candidates\[0\]: template .* lacks \{text\}"),
    ],
)
def test_bad_search_input_gives_one_clear_line_and_writes_nothing(method, params, expected, tmp_path):
    import re

    from test_cli import GOOD, _task, run

    task = _task(tmp_path, GOOD)
    if "EMPTY_WORD" in params:
        task.write_text(task.read_text().replace("b: ' no'", "b: ''"))
        params = []
    out = tmp_path / "out"
    result = run("train", "--method", method, "--task", task, "--shots", 2, "--out", out, "--quiet", *params)
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(expected, lines[0]), lines[0]
    assert not out.exists()


def test_cli_select_prints_every_candidate_and_the_pick(data_dir, tmp_path):
    from test_cli import run

    result = run(
        "train",
        "--method",
        "select",
        "--task",
        "sst2",
        "--data-dir",
        data_dir,
        "--shots",
        2,
        "--eval-limit",
        8,
        "--out",
        tmp_path / "sel",
        "--quiet",
        "-p",
        "candidates=['Review: {sentence}\\nSentiment:', 'Is this review positive or negative?']",
    )
    assert result.exit_code == 0, result.output
    assert "criterion: mi" in result.output and "<- picked" in result.output and "queries used" in result.output

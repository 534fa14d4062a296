"""Discrete search and prompt selection on generative tasks (issue #20, deliverable 2), on the real SmolLM2-135M
and data: evolution ends at or above its starting prompt on held-out instruction-induction examples (the metric
on greedy generations) with every candidate's fitness in its history; select picks by dev metric, by target
likelihood and label-free by the candidates' agreement; rlprompt's reward is the task's metric; prompt-boosting
refuses a generative task with its reason in one line. The budgets were fixed before the first run."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

import prompttune
from prompttune.api import held_out
from prompttune.cli import app
from prompttune.errors import ConfigError
from prompttune.generative import GenerationSetup, generate_answers, score_outputs
from prompttune.methods import get_method
from prompttune.prompts.hard import HardPrompt
from prompttune.tasks import load_task

PLURAL = "ii:singular_to_plural"
SEED_INSTRUCTION = "Make the word plural."  # where the evolution starts (the plain template scores 0 here)
# evolution's run, fixed before the first run: 16 train and 16 dev examples, 40 held-out ones
EVOLUTION = {"shots": 16, "dev_shots": 16, "eval_limit": 40, "budget": 2000, "population": 4, "generations": 2,
             "instruction": SEED_INSTRUCTION}
TINY = {"shots": 4, "dev_shots": 4, "eval_limit": 4}  # runs that check bookkeeping, not learning


def _train(method, backbone, task, data_dir, out, **params):
    return prompttune.train(method, backbone, task, data_dir, seed=0, out=out, progress=False, **params)


def plural_task(data_dir):
    return load_task(PLURAL, data_dir)


def test_evolution_ends_at_or_above_its_starting_prompt_on_held_out_examples(backbone, data_dir, tmp_path,
                                                                             record_property):
    params = dict(EVOLUTION)
    run = {k: params.pop(k) for k in ("shots", "dev_shots", "eval_limit")}
    report = _train("evolution", backbone, PLURAL, data_dir, tmp_path / "evo", **run, **params)
    held = report.meta["metrics"]["eval"]
    assert held["n"] == run["eval_limit"] and report.primary_metric == "exact_match"

    task = plural_task(data_dir)
    draw = task.few_shot(run["shots"], 0, run["dev_shots"])
    examples = held_out(task, task.eval_split_name, draw.train + draw.dev, run["eval_limit"])
    setup = GenerationSetup.of_task(task)

    def held_out_metric(prompt: HardPrompt) -> float:
        answers = generate_answers(backbone, setup, [ex.fields for ex in examples], prompt)
        return score_outputs(setup, answers, [ex.answers for ex in examples])["exact_match"]

    start = held_out_metric(HardPrompt.build(task.spec.template, instruction=SEED_INSTRUCTION))
    plain = held_out_metric(HardPrompt(task.spec.template))
    line = (f"evolution on {PLURAL}: held-out exact match {held['exact_match']:.3f}, its starting instruction "
            f"{start:.3f}, the plain template {plain:.3f} ({report.seconds:.0f} s)")
    print(line)
    record_property("figure", line)
    assert held["exact_match"] >= start and held["exact_match"] >= plain

    # the history: every candidate with its train fitness (target likelihood), then the finalists' dev metric
    history, info = report.meta["history"], report.meta["info"]
    ranked = [r for r in history if "fitness" in r]
    dev = [r for r in history if r.get("stage") == "dev"]
    assert len(ranked) == info["candidates_scored"] >= EVOLUTION["population"] + 1
    assert {r["fitness"] for r in ranked} == {"target log-likelihood per token"} and all(r["score"] < 0 for r in ranked)
    assert any(SEED_INSTRUCTION in r["candidate"] for r in ranked)
    assert dev and {r["metric"] for r in dev} == {"exact_match"} and all(0 <= r["score"] <= 1 for r in dev)
    assert max(r["score"] for r in dev) == pytest.approx(info["dev_fitness"])
    assert info["queries_used"] <= info["budget"] == EVOLUTION["budget"]


CANDIDATES = [SEED_INSTRUCTION, "Write the output for the input.", "Word: {input}\nPlural:"]


@pytest.mark.parametrize("criterion", ["metric", "likelihood", "consistency"])
def test_select_picks_a_candidate_by_each_generative_criterion(criterion, backbone, data_dir, tmp_path):
    report = _train("select", backbone, PLURAL, data_dir, tmp_path / criterion, candidates=CANDIDATES,
                    criterion=criterion, **TINY)
    info = report.meta["info"]
    rows = info["selection"]
    assert info["criterion"] == criterion and info["metric"] == "exact_match" and len(rows) == len(CANDIDATES)
    assert all(r["likelihood"] < 0 for r in rows)  # every candidate's target log-likelihood per token
    assert all(criterion in r and (criterion == "likelihood" or 0 <= r[criterion] <= 1) for r in rows)
    if criterion != "likelihood":  # the dev metric of every candidate whose answers were generated
        assert all(0 <= r["metric"] <= 1 for r in rows)
    if criterion == "consistency":  # label-free: ties go to the earlier candidate
        best = max(range(len(rows)), key=lambda i: (rows[i][criterion], -i))
    else:
        best = max(range(len(rows)), key=lambda i: (rows[i][criterion], rows[i]["likelihood"]))
    assert info["picked"] == best
    assert report.meta["text_prompt"]["template"] in {
        c if "{" in c else HardPrompt.build(plural_task(data_dir).spec.template, instruction=c).template
        for c in CANDIDATES}
    assert [r["score"] for r in report.meta["history"]] == pytest.approx([r[criterion] for r in rows], abs=1e-6)
    lines = get_method("select").result_lines(report.meta)  # what `prompttune train` prints
    assert criterion in lines[1] and f"{best} <- picked" in lines[2 + best]


def test_select_refuses_a_classification_criterion_on_a_generative_task(backbone, data_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"criterion 'mi' reads label probabilities.*metric, likelihood, "
                                          r"consistency") as err:
        _train("select", backbone, PLURAL, data_dir, tmp_path / "x", candidates=CANDIDATES, criterion="mi", **TINY)
    assert "\n" not in str(err.value)


def test_prompt_boosting_refuses_a_generative_task_with_its_reason(data_dir, tmp_path):
    reason = r"cannot learn a prompt for generative task 'ii:singular_to_plural': it learns a verbalizer"
    with pytest.raises(ConfigError, match=reason) as err:
        prompttune.train("prompt-boosting", task=PLURAL, data_dir=data_dir, out=tmp_path / "x", progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "x").exists()

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["train", "--method", "prompt-boosting", "--task", PLURAL, "--data-dir",
                                      str(data_dir), "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(reason, lines[0]), result.output
    assert not out.exists()


def test_rlprompt_rewards_prompts_with_the_task_metric_on_their_generations(backbone, data_dir, tmp_path):
    task_name = "mit-movies:year"  # f1 (primary) on the year the model generates: rewards that vary
    report = _train("rlprompt", backbone, task_name, data_dir, tmp_path / "rl", samples=2, steps=2, finalists=1,
                    budget=500, **TINY)
    info, history = report.meta["info"], report.meta["history"]
    sampled = [r for r in history if "fitness" in r]
    assert {r["fitness"] for r in sampled} == {"f1 on greedy generations (the reward)"}
    assert len(sampled) == info["candidates_scored"] >= 3 and all(0 <= r["score"] <= 1 for r in sampled)
    assert all(r["candidate"] == "the plain template" or r["candidate"].startswith("separator '\\n")
               for r in sampled)  # the policy's tokens: a line of their own before the answer cue
    assert info["queries_used"] <= info["budget"] == 500

    # the chosen prompt's train fitness is the metric of its greedy answers on the train examples
    task = load_task(task_name, data_dir)
    train = task.few_shot(TINY["shots"], 0, TINY["dev_shots"]).train
    setup = GenerationSetup.of_task(task)
    prompt = HardPrompt.from_meta(report.meta["text_prompt"])
    answers = generate_answers(backbone, setup, [ex.fields for ex in train], prompt)
    metric = score_outputs(setup, answers, [ex.answers for ex in train])["f1"]
    assert info["train_fitness"] == pytest.approx(metric, abs=1e-6)

"""LLM optimisers on generative tasks (real SmolLM2-135M as optimiser and task model, real instruction-induction
data): APE ends at or above its starting instruction on held-out exact match and its history carries the
candidates and the finalists' metric; ProTeGi's critique reads the failures' input, expected and produced
output; with an OpenAI-compatible endpoint as the task model every score is the metric on its answers.
The budgets were fixed before the first run."""

from __future__ import annotations

import pytest

import prompttune
from helpers import uvicorn_in_thread
from prompttune.api import serving_engine
from prompttune.generative import GenerationSetup, evaluate_generation, generate_answers
from prompttune.llm import LLM, ChatRequest, make_llm
from prompttune.prompts.hard import HardPrompt
from prompttune.serve import create_app
from prompttune.tasks import load_task
from prompttune.tasks.answer_metrics import exact_match

TASK = "ii:singular_to_plural"
START = "Write the output for the input."  # the generative default instruction


def _few(data_dir, shots: int, dev_shots: int):
    task = load_task(TASK, data_dir)
    return task, task.few_shot(shots, 0, dev_shots=dev_shots)


def test_ape_ends_at_or_above_its_start_and_its_history_has_the_metric(backbone, data_dir, tmp_path,
                                                                        record_property):
    report = prompttune.train("ape", backbone, TASK, data_dir, out=tmp_path / "ape", shots=16, dev_shots=16, seed=0,
                              eval_limit=40, progress=False, budget=1500, finalists=2, n_proposals=4, n_demos=5,
                              iterations=1, llm_max_tokens=40, llm_cache=str(tmp_path / "llm.sqlite"))
    info, history = report.meta["info"], report.meta["history"]
    assert report.primary_metric == "exact_match" and report.test.n == 40
    start = HardPrompt.build(load_task(TASK, data_dir).spec.template, instruction=START)
    assert start.template == info["start_prompt"]
    if report.meta["text_prompt"]["template"] == info["start_prompt"]:
        start_em = report.score
    else:  # the start on the same held-out examples
        task = load_task(TASK, data_dir)
        few = task.few_shot(16, 0, dev_shots=16)
        from prompttune.kinds.text import held_out

        examples = held_out(task, task.eval_split_name, few.train + few.dev, 40)
        start_em = evaluate_generation(backbone, task, examples, start).score
    chosen = report.meta["text_prompt"]["template"]
    record_property("figure", f"ape on {TASK}: held-out exact match start {start_em:.3f} -> {report.score:.3f} "
                    f"({info['llm']['calls']} LLM calls, {info['queries_used']} passes of {info['budget']}, "
                    f"vs start on dev {info.get('vs_start_on_dev', 'same prompt')}) {chosen!r}")
    assert report.score >= start_em

    # every candidate on train (the likelihood it is ranked by), then the finalists' exact match on dev
    induced = [h for h in history if h.get("op") == "induce"]
    assert history[0]["op"] == "start" and induced
    assert all(h["fitness"] == "target log-likelihood per token" and h["score"] < 0 for h in [history[0], *induced])
    assert all(h["critique"] and h["parents"] == [] for h in induced)  # the LLM's answer to the induction prompt
    dev = [h for h in history if h.get("stage") == "dev"]
    assert {h["metric"] for h in dev} == {"exact_match"} and all(0.0 <= h["score"] <= 1.0 for h in dev)
    described = {h["candidate"]: h["score"] for h in dev}
    assert start.describe() in described and len(dev) == len(info["finalists"])
    picked = max(info["finalists"], key=lambda f: f["dev"])
    assert described[picked["prompt"]] == pytest.approx(info["dev_fitness"], abs=1e-6)


def test_apo_critique_sees_input_expected_and_produced_output_of_a_failure(backbone, data_dir, tmp_path,
                                                                           monkeypatch):
    asked: dict[str, list[str]] = {}
    real = LLM.chat_many

    def spy(self, requests, purpose=""):
        asked.setdefault(purpose, []).extend(r.messages[-1][1] for r in requests)
        return real(self, requests, purpose)

    monkeypatch.setattr(LLM, "chat_many", spy)
    report = prompttune.train("apo", backbone, TASK, data_dir, out=tmp_path / "apo", shots=8, dev_shots=4, seed=0,
                              eval_limit=4, progress=False, budget=1000, finalists=1, iterations=1, beam=1,
                              mc_samples=0, eval_rounds=1, prompts_per_round=1, errors_per_gradient=2,
                              samples_per_eval=8, llm_max_tokens=32, llm_cache=str(tmp_path / "llm.sqlite"))
    assert asked.get("gradient"), asked.keys()
    critique = asked["gradient"][0]
    assert "prompt for a task whose answers are text" in critique and START in critique

    # each failure shown: the input, its target, and what the task model answered behind the start prompt
    task, few = _few(data_dir, 8, 4)
    blocks = critique.split("But this prompt gets the following examples wrong:\n")[1].split("\n\nGive a reason")[0]
    shown = [b.split("\n") for b in blocks.split("\n\n")]
    assert len(shown) == 2 and all(len(b) == 3 for b in shown)
    by_input = {ex.fields["input"]: ex for ex in few.train}
    setup = GenerationSetup.of_task(task)
    start = HardPrompt.build(task.spec.template, instruction=START)
    for inp, expected, produced in shown:
        ex = by_input[inp.removeprefix("Input: ")]
        assert expected == f"Expected output: {ex.answers[0].strip()}"
        answer = generate_answers(backbone, setup, [ex.fields], start)[0].strip() or "(nothing)"
        assert produced == f"Produced output: {answer}"
        assert exact_match(answer, list(ex.answers)) < 1.0  # a failure by the metric
    edits = [h for h in report.meta["history"] if h.get("op") == "edit"]
    assert all(h["errors"] == blocks for h in edits)  # the trace keeps what the critique saw


def test_the_metric_is_computed_on_a_task_endpoints_answers(backbone, data_dir, tmp_path, record_property):
    engine = serving_engine([], backbone)
    app = create_app(engine, max_tokens_limit=64)
    cache = str(tmp_path / "llm.sqlite")
    try:
        with uvicorn_in_thread(app) as url:
            report = prompttune.train("ape", backbone, TASK, data_dir, out=tmp_path / "ep", shots=4, dev_shots=4,
                                      seed=0, eval_limit=4, progress=False, budget=200, finalists=1, n_proposals=1,
                                      n_demos=3, iterations=1, llm_max_tokens=32, llm_cache=cache,
                                      task_llm_base_url=url + "/v1", task_llm="smollm2-135m")
            # the answers the search read, replayed from the response cache (keyed by the endpoint): no new call
            replay = make_llm("smollm2-135m", base_url=url + "/v1", cache=cache)
            task, few = _few(data_dir, 4, 4)
            start = HardPrompt.build(task.spec.template, instruction=START)
            assert start.template == report.meta["info"]["start_prompt"]

            def metric(examples) -> tuple[float, list[str]]:
                requests = [ChatRequest.of(start.template.format_map(ex.fields), temperature=0.0, max_tokens=16)
                            for ex in examples]
                answers = [c.texts[0].lstrip().split("\n")[0] for c in replay.chat_many(requests)]
                values = [exact_match(a, list(ex.answers)) for a, ex in zip(answers, examples, strict=True)]
                return sum(values) / len(values), answers

            train_em, answers = metric(few.train)
            dev_em, _ = metric(few.dev)
            assert replay.summary()["new_calls"] == 0
    finally:
        engine.close()
    info, history = report.meta["info"], report.meta["history"]
    assert history[0]["op"] == "start" and history[0]["fitness"] == "exact_match on the endpoint's answers"
    assert history[0]["score"] == pytest.approx(train_em)
    dev_rows = {h["candidate"]: h["score"] for h in history if h.get("stage") == "dev"}
    assert dev_rows[start.describe()] == pytest.approx(dev_em)
    assert info["task_llm"]["calls"] == info["queries_used"] > 0 and info["task_llm"]["errors"] == 0
    assert any(answers)
    record_property("figure", f"ape, task endpoint on {TASK}: start train/dev exact match {train_em:.2f}/{dev_em:.2f}, "
                    f"{info['queries_used']} queries, answers {answers[:2]}")

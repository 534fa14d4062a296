"""LLM-driven optimisers (apo, opro, evoprompt, ape) with the in-process SmolLM2-135M-Instruct as the
optimiser LLM, on SST-2: no worse than the starting prompt on held-out dev sentences, a complete
history, and a second identical run served entirely from the response cache."""

from __future__ import annotations

import pytest

import prompttune
from prompttune.api import held_out
from prompttune.evaluation import evaluate_prompt
from prompttune.methods.family.llm import extract_instructions, sign_test_p
from prompttune.prompts.hard import HardPrompt
from prompttune.tasks import load_task

HELD_OUT = 120
SMALL = {"llm_max_tokens": 40, "iterations": 1}
OPTIMISERS = [
    ("apo", {"beam": 1, "eval_rounds": 2, "mc_samples": 1}),
    ("opro", {"candidates_per_step": 2}),
    ("evoprompt", {"population": 2}),
    ("evoprompt", {"population": 2, "variant": "de"}),
    ("ape", {"n_proposals": 2, "iterations": 2, "keep": 1, "resamples": 1}),
]


@pytest.mark.parametrize(("method", "params"), OPTIMISERS,
                         ids=[m + (f"-{p['variant']}" if "variant" in p else "") for m, p in OPTIMISERS])
def test_optimiser_keeps_its_start_on_held_out_and_reruns_from_the_cache(method, params, backbone, data_dir,
                                                                          tmp_path, record_property):
    kwargs = {"shots": 4, "dev_shots": 16, "seed": 0, "eval_split": "dev", "eval_limit": HELD_OUT,
              "progress": False, "budget": 1500, "llm_cache": str(tmp_path / "llm.sqlite"), **SMALL, **params}
    first = prompttune.train(method, backbone, "sst2", data_dir, out=tmp_path / "a", **kwargs)
    info = first.meta["info"]

    # the starting prompt on the same held-out sentences; when it was kept, the score is its own and the
    # rule that kept it must hold: no rewrite beat it on dev by the sign test
    start_accuracy = first.test.accuracy
    if first.meta["text_prompt"]["template"] == info["start_prompt"]:
        vs = info.get("vs_start_on_dev")
        assert vs is None or vs["p"] >= 0.1, vs  # None: the start was also the best on dev
    else:
        task = load_task("sst2", data_dir)
        few = task.few_shot(4, 0, dev_shots=16)
        examples = held_out(task, "dev", few.train + few.dev, HELD_OUT)
        labels = backbone.label_words(task.words(), task.labels)
        start_accuracy = evaluate_prompt(backbone, task, labels, examples, HardPrompt(info["start_prompt"])).accuracy
    name = method + (f" ({params['variant']})" if "variant" in params else "")
    record_property("figure", f"{name}: held-out SST-2 start {start_accuracy:.3f} -> {first.test.accuracy:.3f} "
                    f"({info['llm']['calls']} LLM calls, {info['queries_used']} forward passes, vs start on dev "
                    f"{info.get('vs_start_on_dev', 'same prompt')}) {first.meta['text_prompt']['template']!r}")
    assert first.test.accuracy >= start_accuracy

    # history: every candidate with its score and where it came from; every LLM call in the ledger
    history = first.meta["history"]
    assert history[0]["op"] == "start" and len(history) > 1
    assert all({"score", "queries", "op", "parents", "critique"} <= h.keys() for h in history[1:])
    assert info["llm"]["calls"] == len(info["llm_calls"]) > 0 and info["llm"]["errors"] == 0
    assert (tmp_path / "a" / "llm_ledger.jsonl").read_text().count("\n") == info["llm"]["calls"]

    kwargs["eval_limit"] = 8  # held-out scoring is not what the rerun checks
    second = prompttune.train(method, backbone, "sst2", data_dir, out=tmp_path / "b", **kwargs)
    assert second.meta["info"]["llm"]["new_calls"] == 0
    assert second.meta["info"]["llm"]["calls"] == info["llm"]["calls"]
    assert second.meta["text_prompt"] == first.meta["text_prompt"] and second.meta["history"] == history


def test_sign_test_and_instruction_extraction():
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(5, 0) == 1 / 32 and sign_test_p(5, 2) == 29 / 128
    assert extract_instructions("Sure! <START>Say if the review is positive.<END> more") == [
        "Say if the review is positive."]
    assert extract_instructions("<INS>Rate it.</INS>", "<INS>", "</INS>") == ["Rate it."]
    assert extract_instructions("Ok\n1. Decide whether the text is positive\nthen") == [
        "Decide whether the text is positive"]


def test_llm_budget_stops_cleanly(backbone, data_dir, tmp_path):
    report = prompttune.train("opro", backbone, "sst2", data_dir, shots=4, seed=0, out=tmp_path / "r",
                              eval_split="dev", eval_limit=16, progress=False, budget=1500, iterations=5,
                              max_llm_calls=1, llm_cache=str(tmp_path / "llm.sqlite"), llm_max_tokens=24,
                              candidates_per_step=1)
    llm = report.meta["info"]["llm"]
    assert llm["calls"] == 1 and llm["budget_exhausted"]
    assert report.meta["text_prompt"]["template"]

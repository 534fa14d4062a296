"""demos-instruction (MIPRO-style joint search over an LLM-induced instruction and a demonstration set) on the
real SmolLM2-135M (optimiser and task model, in-process) and real instruction-induction data. The budget and
the held-out slice were fixed before the first run."""

from __future__ import annotations

import prompttune
from prompttune.generative import GenerationSetup, evaluate_generation, generate_answers
from prompttune.kinds.text import held_out
from prompttune.prompts.hard import HardPrompt
from prompttune.tasks import load_task

TASK = "ii:singular_to_plural"
SHOTS, DEV_SHOTS, EVAL_LIMIT, BUDGET = 12, 12, 20, 1500


def test_joint_search_ends_at_or_above_its_start_and_records_instruction_and_demos(backbone, data_dir, tmp_path):
    report = prompttune.train("demos-instruction", backbone, TASK, data_dir, out=tmp_path / "mipro", shots=SHOTS,
                              dev_shots=DEV_SHOTS, seed=0, eval_limit=EVAL_LIMIT, progress=False, budget=BUDGET,
                              n_instructions=1, n_demo_sets=1, trials=1, llm_max_tokens=40,
                              llm_cache=str(tmp_path / "llm.sqlite"))
    info, history, text = report.meta["info"], report.meta["history"], report.meta["text_prompt"]
    assert info["queries_used"] <= BUDGET and info["llm"]["calls"] >= 1
    ops = [h.get("op") for h in history]
    # the marginal of the sets: the labelled draw and one seeded draw (no demonstrations: the start, already scored)
    assert ops.count("start") == 1 and ops.count("demos") == 2
    ranked = [h for h in history if "demos" in h]
    # never ranked on its own demonstrations, nor on the examples its instruction was induced from
    assert ranked and all(h["ranked_on"] == SHOTS - len(set(h["demos"]) | set(h["induced_from"])) for h in ranked)
    assert any(h["induced_from"] for h in ranked if h["op"] == "instruction")
    dev_rows = [h for h in history if h.get("stage") == "dev"]
    assert dev_rows and all(h["metric"] == "exact_match" for h in dev_rows)

    # the result against its start (the bare default instruction) on the same held-out examples
    task = load_task(TASK, data_dir)
    few = task.few_shot(SHOTS, 0, DEV_SHOTS)
    examples = held_out(task, task.eval_split_name, few.train + few.dev, EVAL_LIMIT)
    start = evaluate_generation(backbone, task, examples, HardPrompt.from_meta({"template": info["start_prompt"]}))
    print(f"{TASK}: start {start.score:.3f} -> demos-instruction {report.score:.3f} "
          f"({len(text.get('demos', []))} demos, instruction {text['instruction']!r:.60})")
    assert report.test.n == EVAL_LIMIT
    assert report.score >= start.score
    # the artifact's template is its instruction, its demonstrations and the task's template, applied after a reload
    base = load_task(TASK, data_dir).spec.template
    assert text["template"] == HardPrompt.build(base, instruction=text["instruction"],
                                                demos=text.get("demos", [])).template
    loaded = prompttune.load(report.out_dir, backbone)
    assert loaded.render("box") == text["template"].format_map({"input": "box"})
    assert loaded.generate(["box"]) == generate_answers(backbone, GenerationSetup.of_task(task), [{"input": "box"}],
                                                        HardPrompt.from_meta(text))

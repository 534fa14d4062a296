"""XPrompt: prompt tuning, token/piece pruning, rewinding, retraining."""

from __future__ import annotations

from safetensors.torch import load_file

import prompttune
from helpers import GAIN, HELD_OUT_DEV, assert_resume_is_bit_identical
from prompttune.api import evaluate, held_out
from prompttune.artifact import ARTIFACT_TENSORS


def test_pruned_prompt_keeps_accuracy_with_fewer_tokens(backbone, data_dir, sst2, tmp_path, zero_shot_accuracy):
    out = tmp_path / "xprompt"
    report = prompttune.train("xprompt", backbone, "sst2", data_dir, shots=16, seed=0, out=out, eval_split="dev",
                              eval_limit=HELD_OUT_DEV, steps=32, retrain_steps=16, eval_every=8, progress=False)
    tensors = load_file(str(out / ARTIFACT_TENSORS))
    info = report.meta["info"]
    fewshot = sst2.few_shot(16, 0)
    unpruned = evaluate(backbone, sst2, held_out(sst2, "dev", fewshot.train + fewshot.dev, HELD_OUT_DEV),
                        tensors["unpruned"]).accuracy
    pruned = report.test.accuracy
    print(f"xprompt: zero-shot {zero_shot_accuracy:.3f}, unpruned {unpruned:.3f}, pruned {pruned:.3f} "
          f"with {info['active_tokens']}/20 tokens, {info['active_pieces']}/{info['pieces']} pieces")
    assert tensors["prompt"].shape[0] == info["active_tokens"] < 20 == tensors["unpruned"].shape[0]
    assert info["active_pieces"] < info["pieces"]
    assert (tensors["prompt"] == 0).any()  # pruned pieces are zero
    assert pruned >= unpruned - 0.02
    assert pruned >= zero_shot_accuracy + GAIN
    assert report.meta["trainable_parameters"] == info["active_pieces"] * backbone.hidden_size // 16
    assert {h["phase"] for h in report.meta["history"]} == {"tune", "retrain-1"}


def test_xprompt_resumes_inside_either_phase(backbone, data_dir, tmp_path):
    for crash_after in (2, 5):  # in the tuning phase, then in the retraining phase
        assert_resume_is_bit_identical(
            "xprompt", tmp_path / str(crash_after), crash_after=crash_after, model=backbone, task="sst2",
            data_dir=data_dir, shots=2, seed=0, eval_split="dev", eval_limit=4, steps=3, retrain_steps=3,
            eval_every=2, batch_size=2, n_tokens=4, progress=False,
        )

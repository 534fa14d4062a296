"""Prompt transfer (SPoT / PANDA), the transferability score, and multitask prompt tuning (MPT)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import prompttune
from helpers import GAIN, assert_resume_is_bit_identical
from prompttune.cli import app

TWEETS_HELD_OUT = 200


@pytest.fixture(scope="module")
def sst2_prompt(backbone, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer") / "sst2"
    prompttune.train("prompt-tuning", backbone, "sst2", data_dir, shots=16, seed=0, out=out, steps=32, eval_every=8,
                     eval_limit=8, progress=False)
    return out


@pytest.fixture(scope="module")
def tweets_zero_shot(backbone, data_dir, tmp_path_factory) -> float:
    report = prompttune.train("zero-shot", backbone, "tweets", data_dir, shots=16, seed=0,
                              out=tmp_path_factory.mktemp("zs") / "tweets", eval_limit=TWEETS_HELD_OUT, progress=False)
    return report.test.accuracy


def test_transfer_from_sst2_starts_from_the_source_and_beats_zero_shot(
    sst2_prompt, backbone, data_dir, tmp_path, tweets_zero_shot
):
    from safetensors.torch import load_file

    from prompttune.api import evaluate
    from prompttune.tasks import load_task

    common = dict(model=backbone, task="tweets", data_dir=data_dir, shots=16, seed=0, eval_limit=TWEETS_HELD_OUT,
                  progress=False)
    transfer = prompttune.train("prompt-transfer", out=tmp_path / "transfer", source=str(sst2_prompt), distill=1.0,
                                steps=32, eval_every=8, **common)
    # only its step-0 dev accuracy is printed: no held-out scoring needed
    random_init = prompttune.train("prompt-tuning", out=tmp_path / "random", init="random", steps=1,
                                   **{**common, "eval_limit": 8})
    # step 0 of the transfer run is the source prompt itself, scored on the target's dev set
    source = load_file(str(sst2_prompt / "prompt.safetensors"))["prompt"]
    tweets = load_task("tweets", data_dir)
    start = evaluate(backbone, tweets, tweets.few_shot(16, 0).dev, source)
    assert transfer.meta["history"][0]["dev_accuracy"] == start.accuracy
    print(f"tweets step-0 dev: random init {random_init.meta['history'][0]['dev_accuracy']:.3f}, SST-2 prompt "
          f"{start.accuracy:.3f}; held-out zero-shot {tweets_zero_shot:.3f} -> transfer {transfer.test.accuracy:.3f}")
    # (SmolLM2-135M gives the SST-2 prompt no head start over a random one on tweets at step 0: both
    # score 0.500 here, because neither ever predicts " neutral"; see the closing note of issue #3.)
    assert transfer.test.accuracy >= tweets_zero_shot + GAIN
    assert transfer.meta["info"]["source"].endswith("sst2")


def test_transfer_score_cli(sst2_prompt, tmp_path, backbone, data_dir):
    result = CliRunner().invoke(app, ["transfer-score", str(sst2_prompt), str(sst2_prompt)])
    assert result.exit_code == 0, result.output
    last = dict(kv.split("=") for kv in result.output.strip().splitlines()[-1].split())
    assert all(abs(float(v) - 1) < 1e-4 for v in last.values()), last  # a prompt is fully like itself
    prompttune.train("prompt-tuning", backbone, "sst2", data_dir, shots=2, out=tmp_path / "other", init="random",
                     steps=1, eval_limit=2, progress=False)
    result = CliRunner().invoke(app, ["transfer-score", str(sst2_prompt), str(tmp_path / "other")])
    assert result.exit_code == 0, result.output
    scores = {k: float(v) for k, v in (kv.split("=") for kv in result.output.strip().splitlines()[-1].split())}
    assert set(scores) == {"prompt_cosine", "token_cosine", "activation_cosine"}
    assert all(-1 <= v < 0.999 for v in scores.values()), scores


def test_transfer_refuses_a_source_of_another_backbone_or_length(sst2_prompt, tiny_llama_dir, backbone, data_dir,
                                                                   tmp_path):
    other = tmp_path / "tiny"
    prompttune.train("prompt-tuning", str(tiny_llama_dir), "sst2", data_dir, shots=2, out=other, steps=1,
                     eval_limit=2, progress=False)
    with pytest.raises(prompttune.PromptTuneError, match=r"trained on backbone .*tiny.*this run uses 'smollm2-135m'"):
        prompttune.train("prompt-transfer", backbone, "tweets", data_dir, shots=2, out=tmp_path / "x",
                         source=str(other), progress=False)
    with pytest.raises(prompttune.PromptTuneError, match=r"has a 20-token prompt, this run asks for n_tokens 8"):
        prompttune.train("prompt-transfer", backbone, "tweets", data_dir, shots=2, out=tmp_path / "x",
                         source=str(sst2_prompt), n_tokens=8, progress=False)
    with pytest.raises(prompttune.PromptTuneError, match="source: Field required"):
        prompttune.train("prompt-transfer", backbone, "tweets", data_dir, shots=2, out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_multitask_prompt_tuning_from_two_sources_beats_zero_shot(sst2_prompt, backbone, data_dir, tmp_path,
                                                                  tweets_zero_shot):
    trec = tmp_path / "trec"
    prompttune.train("prompt-tuning", backbone, "trec", data_dir, shots=4, seed=0, out=trec, steps=16, eval_every=8,
                     eval_limit=8, progress=False)
    report = prompttune.train(
        "multitask-prompt-tuning", backbone, "tweets", data_dir, shots=16, seed=0, out=tmp_path / "mpt",
        sources=[str(sst2_prompt), str(trec)], distill_steps=16, steps=32, eval_every=8,
        eval_limit=TWEETS_HELD_OUT, progress=False,
    )
    print(f"mpt: tweets zero-shot {tweets_zero_shot:.3f} -> {report.test.accuracy:.3f}")
    assert report.test.accuracy >= tweets_zero_shot + GAIN
    phases = [h["phase"] for h in report.meta["history"]]
    assert phases[0] == "distill" and phases[-1] == "target"
    assert report.meta["trainable_parameters"] == 20 * backbone.hidden_size + 20 + backbone.hidden_size
    short = tmp_path / "short"
    prompttune.train("prompt-tuning", backbone, "sst2", data_dir, shots=2, out=short, n_tokens=5, steps=1,
                     eval_limit=2, progress=False)
    with pytest.raises(prompttune.PromptTuneError, match="has a 5-token prompt, source .* a 20-token one"):
        prompttune.train("multitask-prompt-tuning", backbone, "tweets", data_dir, shots=2, out=tmp_path / "y",
                         sources=[str(sst2_prompt), str(short)], progress=False)


def test_transfer_and_mpt_resume_bit_identically(sst2_prompt, backbone, data_dir, tmp_path):
    common = dict(model=backbone, task="tweets", data_dir=data_dir, shots=2, seed=0, eval_limit=4,
                  steps=3, eval_every=2, batch_size=2, progress=False)
    assert_resume_is_bit_identical("prompt-transfer", tmp_path / "t", crash_after=2, source=str(sst2_prompt),
                                   distill=1.0, **common)
    # killed inside the distillation phase: it resumes there, then runs the target phase
    assert_resume_is_bit_identical("multitask-prompt-tuning", tmp_path / "m", crash_after=2,
                                   sources=[str(sst2_prompt)], distill_steps=3, **common)

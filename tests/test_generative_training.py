"""Soft prompts learn generative tasks: on held-out instruction-induction and MIT Movies examples, real
SmolLM2-135M, seed 0. The budgets below were fixed before the first run; the zero-shot figure is the
task's template alone, scored the same way (greedy generation, the task's metric) on the same examples."""

from __future__ import annotations

import pytest

import prompttune

# One budget for every learning test here (decided before the first run).
SHOTS, DEV_SHOTS, EVAL_LIMIT = 32, 16, 60
BUDGET = {"steps": 60, "batch_size": 8, "eval_every": 20, "n_tokens": 10}  # each method's own default lr


def _train(method: str, task: str, data_dir, tmp_path, **params):
    return prompttune.train(method, model="smollm2-135m", task=task, data_dir=data_dir, shots=SHOTS,
                            dev_shots=DEV_SHOTS, eval_limit=EVAL_LIMIT, seed=0, out=tmp_path / f"{method}-{task}",
                            progress=False, **params)


@pytest.fixture(scope="module")
def zero_shot(data_dir, tmp_path_factory):
    """The template alone on each task's held-out slice: {task: (primary metric, report)}."""
    out = {}

    def get(task: str):
        if task not in out:
            report = _train("zero-shot", task, data_dir, tmp_path_factory.mktemp("zs"))
            out[task] = report
        return out[task]

    return get


@pytest.mark.parametrize("task", ["ii:singular_to_plural", "ii:first_word_letter"])
def test_prompt_tuning_beats_zero_shot_by_ten_points_of_exact_match(task, data_dir, tmp_path, zero_shot):
    base = zero_shot(task)
    tuned = _train("prompt-tuning", task, data_dir, tmp_path, **BUDGET)
    assert tuned.primary_metric == base.primary_metric == "exact_match"
    assert tuned.test.n == base.test.n == EVAL_LIMIT
    print(f"{task}: zero-shot {base.score:.3f}, prompt tuning {tuned.score:.3f}")
    assert tuned.score >= base.score + 0.10


def test_prompt_tuning_improves_token_f1_on_a_mit_movies_slot(data_dir, tmp_path, zero_shot):
    task = "mit-movies:director"
    base = zero_shot(task)
    tuned = _train("prompt-tuning", task, data_dir, tmp_path, **BUDGET)
    assert tuned.primary_metric == "f1"
    print(f"{task}: zero-shot F1 {base.score:.3f}, prompt tuning {tuned.score:.3f}")
    assert tuned.score > base.score


@pytest.mark.parametrize("method", ["prefix-tuning", "residual-prompt-tuning"])
def test_prefix_tuning_and_a_reparameterised_prompt_beat_zero_shot(method, data_dir, tmp_path, zero_shot):
    task = "ii:singular_to_plural"
    base = zero_shot(task)
    tuned = _train(method, task, data_dir, tmp_path, **BUDGET)
    print(f"{method} on {task}: zero-shot {base.score:.3f}, tuned {tuned.score:.3f}")
    assert tuned.score > base.score

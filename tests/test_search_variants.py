"""The search variants beside each method's default (issue #7): BBTv2's deep prompts, AutoPrompt's
label-word search and separators written by the model itself. Small budgets: these check what each
variant does, the learning claims are in test_search.py."""

from __future__ import annotations

import prompttune

TREC = {"shots": 4, "seed": 0, "progress": False}  # 24 train and 24 dev TREC questions


def _held_out_accuracy(report, backbone, data_dir) -> float:
    """The artifact's accuracy on the run's own held-out questions, recomputed through `load`."""
    from prompttune.tasks import load_task

    task = load_task("trec", data_dir)
    few = task.few_shot(TREC["shots"], 0)
    held = prompttune.api.held_out(task, "test", few.train + few.dev, report.test.n)
    predicted = prompttune.load(report.out_dir, model=backbone).predict([e.fields for e in held])
    return sum(p == e.label for p, e in zip(predicted, held, strict=True)) / len(held)


def test_bbtv2_searches_per_layer_keys_and_values_and_lowers_its_loss(backbone, data_dir, tmp_path):
    report = prompttune.train(
        "bbt",
        backbone,
        "trec",
        data_dir,
        out=tmp_path / "v2",
        variant="bbtv2",
        budget=560,
        intrinsic_dim=20,
        popsize=6,
        **{**TREC, "eval_limit": 8},
    )
    info, trace = report.meta["info"], report.meta["history"]
    assert report.meta["prompt_kind"] == "kv" and info["variant"] == "bbtv2"
    assert info["queries_used"] <= 560 and info["iterations"] == 3  # (560 - dev reserve 96 - start 24) // (6 x 24)
    assert {t["layer"] for t in trace} == {0, 1, 2}  # one CMA-ES generation per layer, cycling
    assert max(t["score"] for t in trace) > trace[0]["score"]  # some layer's move lowered the train loss of p0
    tensors = prompttune.artifact.read_artifact(report.out_dir)[1]
    layers = backbone.model.config.num_hidden_layers
    assert tensors["keys"].shape[0] == layers and tensors["keys"].shape == tensors["values"].shape
    assert _held_out_accuracy(report, backbone, data_dir) == report.test.accuracy


def test_autoprompt_label_search_picks_one_distinct_word_per_class(backbone, data_dir, tmp_path):
    report = prompttune.train(
        "autoprompt",
        backbone,
        "trec",
        data_dir,
        out=tmp_path / "ls",
        label_search=True,
        budget=600,
        iterations=2,
        n_candidates=4,
        **{**TREC, "eval_limit": 8},
    )
    words = report.meta["info"]["label_words"]
    assert len(words) == 6 and len(set(words)) == 6
    assert all(len(backbone.tokenizer(w, add_special_tokens=False)["input_ids"]) == 1 for w in words)
    assert list(report.meta["text_prompt"]["words"]) == list(words)  # the artifact carries its own verbalizer
    predictor = prompttune.load(report.out_dir, model=backbone)
    assert [w[0] for w in predictor.label_words.words] == [
        tuple(backbone.tokenizer(w, add_special_tokens=False)["input_ids"]) for w in words
    ]
    assert _held_out_accuracy(report, backbone, data_dir) == report.test.accuracy


def test_random_separators_from_the_model_are_its_own_seeded_text(backbone, data_dir, tmp_path):
    kwargs = dict(source="model", budget=250, n_candidates=4, round_size=4, **{**TREC, "eval_limit": 8})
    runs = [
        prompttune.train("random-separators", backbone, "trec", data_dir, out=tmp_path / str(i), **kwargs)
        for i in range(2)
    ]
    scored = [[t["candidate"] for t in r.meta["history"]] for r in runs]
    assert scored[0] == scored[1]  # seeded: the same text twice
    vocab = prompttune.train(
        "random-separators", backbone, "trec", data_dir, out=tmp_path / "v", **{**kwargs, "source": "vocab"}
    )
    separators = set(scored[0]) - {"the plain template"}  # both score the plain template too, as a floor
    assert len(separators) == 4 and not separators & {t["candidate"] for t in vocab.meta["history"]}
    assert runs[0].meta["info"]["queries_used"] <= 250

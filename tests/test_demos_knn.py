"""demos-knn (issue 20): per input, its k nearest training examples by an embedding (the backbone's pooled
states or the MiniLM sentence encoder) are its demonstrations. On the real SmolLM2-135M, the real MiniLM
package and real data: the artifact picks the same neighbours after save -> reload; predict, evaluate and
serve apply it on a generative task; a classification task works (and --port-to re-encodes the pool on the
other model); a demonstration count over the pool and an encoder that is not one fail in one line each."""

from __future__ import annotations

import openai
import pytest
import torch
import torch.nn.functional as F

import prompttune
from helpers import uvicorn_in_thread
from prompttune.api import evaluate_artifact, load, serving_engine
from prompttune.errors import ConfigError
from prompttune.generative import evaluate_generation
from prompttune.models import load_backbone
from prompttune.prompts.demos import demo_record
from prompttune.prompts.knn import KnnDemos
from prompttune.serve import create_app
from prompttune.tasks import load_task

TASK = "ii:singular_to_plural"
GEN = {"shots": 16, "dev_shots": 4, "seed": 0, "progress": False}  # budget fixed before the first run
HELD_OUT = 24
WORDS = ["box", "child", "city", "mouse", "leaf", "bus"]
KEY = "knn-key"


@pytest.fixture(scope="module")
def runs(backbone, data_dir, tmp_path_factory):
    """demos-knn on an ii task with each encoder (the backbone run scored on HELD_OUT examples; the MiniLM
    run, there for its neighbours, on a couple), and on SST-2 with --port-to a second, tiny model."""
    root = tmp_path_factory.mktemp("knn")
    reports = {
        "backbone": prompttune.train("demos-knn", backbone, TASK, data_dir, out=root / "backbone",
                                     eval_limit=HELD_OUT, k=4, **GEN),
        "minilm": prompttune.train("demos-knn", backbone, TASK, data_dir, out=root / "minilm", eval_limit=2,
                                   k=4, encoder="minilm", **{**GEN, "dev_shots": 2}),
    }
    return root, reports


def _pool(data_dir):
    task = load_task(TASK, data_dir)
    train = task.few_shot(GEN["shots"], GEN["seed"], GEN["dev_shots"]).train
    return task, [demo_record(task, ex) for ex in train]


@pytest.mark.parametrize("encoder", ["backbone", "minilm"])
def test_knn_demos_pick_the_same_neighbours_after_save_and_reload(runs, backbone, data_dir, encoder):
    root, reports = runs
    meta = reports[encoder].meta
    assert meta["prompt_kind"] == "knn-demos" and meta["text_prompt"]["encoder"] == ("backbone" if encoder ==
                                                                                     "backbone" else "minilm-l6")
    task, records = _pool(data_dir)
    assert meta["text_prompt"]["demos"] == records  # the pool is the few-shot train draw, in order
    fresh = KnnDemos.fit(backbone, task.spec.template, records, 4, encoder)
    predictor = load(root / encoder, model=backbone)
    reloaded = predictor.prompt  # a generative predictor holds the bound prompt
    items = [{"input": w} for w in WORDS]
    assert torch.equal(reloaded.pool, fresh.pool)  # the stored embeddings are the ones training made
    near = reloaded.neighbours(items)
    assert near == fresh.neighbours(items) and all(len(set(n)) == 4 for n in near)
    assert [predictor.render(w) for w in WORDS] == fresh.render_many(items)
    # the nearest is the highest cosine, computed here from scratch, one text at a time: the backbone's mean last
    # hidden state over the rendered input, or MiniLM's mean-pooled embedding of the input's text
    model = reloaded._model
    def vector(fields):
        if encoder == "backbone":
            return backbone.pooled(backbone.tokenize([task.spec.template.format_map(fields)]))[0]
        return model.features(model.tokenize([fields["input"]]))[0]
    pool = torch.stack([vector(r["fields"]) for r in records])
    for item, n in zip(items, near, strict=True):
        assert int(F.cosine_similarity(vector(item)[None], pool).argmax()) == n[0]
    text = predictor.render(WORDS[0])  # the nearest demonstration sits right before the input
    nearest = records[near[0][0]]
    assert text.endswith(f"Input: {nearest['fields']['input']}\nOutput:{nearest['answer']}\n\nInput: box\nOutput:")


def test_demos_knn_beats_zero_shot_and_evaluate_reproduces_its_answers(runs, backbone, data_dir, record_property):
    root, reports = runs
    knn = reports["backbone"].test
    task = load_task(TASK, data_dir)
    fewshot = task.few_shot(GEN["shots"], GEN["seed"], GEN["dev_shots"])
    taken = {ex.origin for ex in fewshot.train + fewshot.dev}
    held = [ex for ex in task.split(task.eval_split_name) if ex.origin not in taken][:HELD_OUT]
    zero = evaluate_generation(backbone, task, held, None)
    record_property("figure", f"demos-knn (k=4, backbone encoder, 16-example pool) on {TASK}: held-out EM "
                              f"{knn.score:.3f} vs zero-shot {zero.score:.3f} (n={knn.n})")
    assert knn.n == zero.n == HELD_OUT and knn.score > zero.score
    for encoder in ("backbone", "minilm"):  # `prompttune evaluate` reproduces the train-time figures (first ones)
        n = min(4, reports[encoder].test.n)
        again = evaluate_artifact(root / encoder, data_dir=data_dir, limit=n, model=backbone)
        assert again.predictions == reports[encoder].test.predictions[:n] and again.excluded == 0


def test_predict_and_serve_answer_with_the_artifact(runs, backbone):
    root, _ = runs
    predictor = load(root / "backbone", model=backbone)
    answers = predictor.predict(WORDS[:3])
    assert answers == [predictor.generate(w) for w in WORDS[:3]]
    assert answers[0].strip() == "boxes"
    engine = serving_engine([f"knn={root / 'backbone'}"], backbone, batch_wait_ms=20)
    try:
        with uvicorn_in_thread(create_app(engine, api_key=KEY, max_tokens_limit=32)) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
            done = client.completions.create(model="knn", prompt=WORDS[:3], temperature=0)
            assert [c.text for c in done.choices] == answers
            chat = client.chat.completions.create(model="knn", temperature=0,
                                                  messages=[{"role": "user", "content": WORDS[1]}])
            assert chat.choices[0].message.content == answers[1]
            listed = {m.id: m.model_dump() for m in client.models.list().data}
            assert listed["knn"]["kind"] == "knn-demos" and listed["knn"]["task_type"] == "generation"
    finally:
        engine.close()


def test_a_classification_task_and_port_to_another_model(backbone, data_dir, tmp_path, tiny_llama_dir,
                                                         record_property):
    report = prompttune.train("demos-knn", backbone, "sst2", data_dir, out=tmp_path / "sst2", shots=3, dev_shots=1,
                              seed=0, eval_limit=12, progress=False, k=2, port_to=[str(tiny_llama_dir)])
    pool = report.meta["text_prompt"]["demos"]
    assert len(pool) == 6 and {d["answer"] for d in pool} == {" negative", " positive"}
    port = report.meta["portability"][0]
    assert port["n"] == 12 and 0.0 <= port["accuracy"] <= 1.0
    predictor = load(tmp_path / "sst2", model=backbone)
    sentences = ["a gripping, beautifully acted film", "dull, lifeless and far too long"]
    assert predictor.render(sentences[0]).endswith("Review: a gripping, beautifully acted film\nSentiment:")
    assert predictor.render(sentences[0]).count("\nSentiment:") == 3  # two demonstrations, then the input
    labels = predictor.predict(sentences)
    engine = serving_engine([f"sst2={tmp_path / 'sst2'}"], backbone, batch_wait_ms=0)
    try:
        served = engine.classify("sst2", sentences, timeout=60).result(timeout=120)
    finally:
        engine.close()
    assert [label for label, _ in served] == labels
    # the pool of a "backbone" prompt is re-encoded on another model (another space, here 64-wide)
    other = load_backbone(str(tiny_llama_dir), device="cpu")
    moved = predictor.renderer.bind(other)
    assert moved.pool.shape == (6, 64) and moved.encoded_by == other.fingerprint
    assert len(moved.neighbours([{"sentence": s} for s in sentences])[0]) == 2
    record_property("figure", f"demos-knn (k=2, 6-example pool) on sst2: held-out accuracy {report.test.accuracy:.3f} "
                              f"(n={report.test.n}); ported to a random tiny Llama {port['accuracy']:.3f}")


def test_k_larger_than_the_pool_is_one_clear_line(backbone, data_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"k=20 .* pool .* only 16 example") as err:
        prompttune.train("demos-knn", backbone, TASK, data_dir, out=tmp_path / "big", k=20, eval_limit=2, **GEN)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "big" / "prompt.json").exists()


@pytest.mark.parametrize("encoder, why", [("smollm2-135m", "is a causal-lm model, not a sentence encoder"),
                                          ("NOMODEL", "is not a model")])
def test_an_encoder_that_is_not_an_encoder_is_one_clear_line(backbone, data_dir, tmp_path, encoder, why):
    value = str(tmp_path) if encoder == "NOMODEL" else encoder  # a directory that holds no model
    with pytest.raises(ConfigError, match=f"encoder '{value}' {why}") as err:
        prompttune.train("demos-knn", backbone, TASK, data_dir, out=tmp_path / "run", encoder=value, **GEN)
    message = str(err.value)
    assert "\n" not in message and "expected 'backbone'" in message and "minilm-l6" in message

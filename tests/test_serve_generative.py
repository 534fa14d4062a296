"""`prompttune serve` with generative artifacts (issue 19), through the official openai client over loopback
HTTP, on the real SmolLM2-135M and real data: completions and chat answer with the artifact's template,
prompt (soft, or deep keys/values applied row by row), stop strings and answer length, exactly as
`prompttune.load(dir).generate` does; /v1/classify refuses them with a 400 that says why; one server
answers classification and generative artifacts of the same model together."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

import prompttune
from helpers import uvicorn_in_thread
from prompttune.api import load, serving_engine
from prompttune.serve import create_app

KEY = "gen-key"
TASK = "ii:singular_to_plural"
WORDS = ["cat", "mouse", "child", "box"]


@pytest.fixture(scope="module")
def artifacts(backbone, data_dir, tmp_path_factory):
    """Two generative artifacts (a soft prompt, served in the engine's batched path, and a deep key/value
    prompt, applied row by row), an SST-2 classifier trained a few steps and zero-shot RTE (two fields)."""
    root = tmp_path_factory.mktemp("serve-gen")
    quick = {"shots": 8, "seed": 0, "eval_limit": 8, "progress": False}  # training is not under test here
    prompttune.train("prompt-tuning", backbone, TASK, data_dir, out=root / "soft", steps=4, n_tokens=4, **quick)
    prompttune.train("p-tuning-v2", backbone, TASK, data_dir, out=root / "deep", steps=2, n_tokens=4, **quick)
    prompttune.train("prompt-tuning", backbone, "sst2", data_dir, out=root / "sst2", steps=3, n_tokens=4,
                     eval_split="test", **quick)
    prompttune.train("zero-shot", backbone, "rte", data_dir, out=root / "rte", shots=2, seed=0, eval_limit=4,
                     progress=False)
    return root


@pytest.fixture(scope="module")
def server(backbone, artifacts):
    specs = [f"{n}={artifacts / n}" for n in ("soft", "deep", "sst2", "rte")]
    engine = serving_engine(specs, backbone, batch_wait_ms=50)
    app = create_app(engine, api_key=KEY, max_tokens_limit=64)
    with uvicorn_in_thread(app) as url:
        yield {"url": url, "engine": engine,
               "client": openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)}
    engine.close()


@pytest.fixture(scope="module")
def predictors(backbone, artifacts):
    return {name: load(artifacts / name, model=backbone) for name in ("soft", "deep", "sst2", "rte")}


def post(url: str, body: dict) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, json.dumps(body).encode(), headers), timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("name", ["soft", "deep"])
def test_completions_and_chat_answer_as_load_generate_does(server, predictors, name):
    """No max_tokens, no stop: the artifact's own settings; the text goes through its template once."""
    client, predictor = server["client"], predictors[name]
    expected = predictor.generate(WORDS)
    done = client.completions.create(model=name, prompt=WORDS, temperature=0)
    assert [c.text for c in done.choices] == expected
    for word, answer in zip(WORDS[:2], expected, strict=False):
        chat = client.chat.completions.create(model=name, temperature=0, messages=[
            {"role": "system", "content": "ignored: an artifact answers the last user message"},
            {"role": "user", "content": "not this one"}, {"role": "user", "content": word}])
        assert chat.choices[0].message.content == answer


@pytest.mark.parametrize("name", ["soft", "deep"])
def test_streamed_answers_equal_the_whole_ones(server, predictors, name):
    client, word = server["client"], WORDS[0]
    expected = predictors[name].generate(word)
    chunks = list(client.completions.create(model=name, prompt=word, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model=name, messages=[{"role": "user", "content": word}],
                                                 temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected


# Texts the model tends to continue line after line (sent `raw`: no template, the artifact's prompt in place).
MULTILINE = ["1. apple\n2. banana\n3.", "Input: dog\nOutput: dogs\nInput: box\nOutput:", "def add(a, b):\n    return",
             "Once upon a time"]


@pytest.mark.parametrize("name", ["soft", "deep"])
def test_the_artifacts_stop_string_cuts_the_answer(server, predictors, backbone, name):
    """Where the model, without the stop string, writes on past a newline, the served answer ends before it
    and generation stopped there."""
    predictor = predictors[name]
    assert predictor.stop == ["\n"]
    uncut = {t: backbone.generate([t], predictor.prompt, max_new_tokens=predictor.max_new_tokens)[0] for t in MULTILINE}
    text = next((t for t, out in uncut.items() if "\n" in out.rstrip()), None)
    assert text is not None, uncut
    done = server["client"].completions.create(model=name, prompt=text, temperature=0, extra_body={"raw": True})
    assert done.choices[0].text == uncut[text][: uncut[text].index("\n")] and done.choices[0].finish_reason == "stop"
    assert done.usage.completion_tokens < predictor.max_new_tokens
    chunks = list(server["client"].completions.create(model=name, prompt=text, temperature=0, stream=True,
                                                      extra_body={"raw": True}))
    assert "".join(c.choices[0].text for c in chunks) == done.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("name", ["soft", "deep"])
def test_a_requests_own_stop_and_max_tokens_are_honoured(server, predictors, name):
    client, predictor = server["client"], predictors[name]
    word, answer = next((w, a) for w, a in zip(WORDS, predictor.generate(WORDS), strict=True) if len(a.strip()) > 1)
    stop = answer.strip()[1]
    done = client.completions.create(model=name, prompt=word, temperature=0, stop=[stop])
    assert done.choices[0].text == answer[: answer.index(stop)] and done.choices[0].finish_reason == "stop"
    chat = client.chat.completions.create(model=name, messages=[{"role": "user", "content": word}], temperature=0,
                                          stop=stop)
    assert chat.choices[0].message.content == answer[: answer.index(stop)]
    short = client.completions.create(model=name, prompt=word, temperature=0, max_tokens=1)
    assert short.choices[0].text == predictor.generate(word, max_new_tokens=1)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 1


def test_max_tokens_defaults_to_the_artifacts_answer_length_capped_by_the_server(server, predictors):
    """The artifact records 16 new tokens; a server whose limit is lower serves its own limit by default and
    still refuses an explicit request over it."""
    assert predictors["soft"].max_new_tokens == 16
    with uvicorn_in_thread(create_app(server["engine"], api_key=KEY, max_tokens_limit=1)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        done = client.completions.create(model="soft", prompt=WORDS[1], temperature=0)
        assert done.usage.completion_tokens == 1 and done.choices[0].finish_reason == "length"
        with pytest.raises(openai.BadRequestError, match="over this server's limit of 1"):
            client.completions.create(model="soft", prompt=WORDS[1], temperature=0, max_tokens=2)


def test_classify_on_a_generative_artifact_is_a_400_that_says_why(server):
    status, body = post(server["url"] + "/v1/classify", {"model": "soft", "input": ["cat"]})
    assert status == 400 and body["error"]["code"] == "not_a_classifier"
    message = body["error"]["message"]
    assert "generates text" in message and "/v1/completions" in message and "/v1/chat/completions" in message


def test_models_lists_generative_artifacts_with_their_task(server):
    listed = {m.id: m.model_dump() for m in server["client"].models.list().data}
    assert set(listed) == {"smollm2-135m", "soft", "deep", "sst2", "rte"}
    for name, kind in (("soft", "soft"), ("deep", "kv")):
        assert listed[name]["task_type"] == "generation" and listed[name]["task"] == TASK
        assert listed[name]["kind"] == kind and listed[name]["stop"] == ["\n"] and listed[name]["max_new_tokens"] == 16
    assert listed["sst2"]["task_type"] == "classification" and listed["sst2"]["labels"] == ["0", "1"]


def test_one_server_answers_classifiers_and_generators_batched_together(server, predictors):
    """Generation rows of different artifacts (and classification rows) queued together: each answer is
    the artifact's own, and the soft generators' rows run in one batched `generate` call."""
    engine = server["engine"]
    sentences = ["a gripping, beautifully acted film", "dull and far too long"]
    status, body = post(server["url"] + "/v1/classify", {"model": "sst2", "input": sentences})
    assert status == 200 and [d["label"] for d in body["data"]] == predictors["sst2"].predict(sentences)
    soft = predictors["soft"]
    before = engine.stats["forward_passes"]
    futures = [engine.generate("soft", [soft.render(w)], 16, timeout=60) for w in WORDS]  # four requests
    classified = engine.classify("sst2", sentences, timeout=60)
    assert [f.result(timeout=120)[0][0] for f in futures] == soft.generate(WORDS)
    assert [label for label, _ in classified.result(timeout=120)] == predictors["sst2"].predict(sentences)
    assert engine.stats["forward_passes"] - before == 2  # one generate call for the four, one classification pass
    chat = server["client"].chat.completions.create(model="sst2", messages=[{"role": "user", "content": "a fine film"}],
                                                    max_tokens=4, temperature=0)
    assert chat.choices[0].message.content == predictors["sst2"].generate("a fine film", max_new_tokens=4)


def test_a_template_with_several_fields_takes_a_json_object_string(server, predictors):
    fields = {"premise": "A man is playing a guitar.", "hypothesis": "A person makes music."}
    done = server["client"].completions.create(model="rte", prompt=json.dumps(fields), max_tokens=4, temperature=0)
    assert done.choices[0].text == predictors["rte"].generate(fields, max_new_tokens=4)
    with pytest.raises(openai.BadRequestError, match="JSON object string"):
        server["client"].completions.create(model="rte", prompt="just one text", max_tokens=4)

"""The command line: the documented commands end to end, and one clear line for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from prompttune.cli import app

runner = CliRunner()


def run(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("cli") / "pt-sst2"
    result = run("train", "--method", "prompt-tuning", "--model", "smollm2-135m", "--task", "sst2",
                 "--data-dir", data_dir, "--shots", 4, "--seed", 0, "--out", out, "--steps", 4, "--lr", 0.03,
                 "-p", "eval_every=2", "--eval-limit", 20, "--quiet")
    assert result.exit_code == 0, result.output
    return out, result.output


def test_train_prints_metrics_and_writes_artifact(trained):
    out, output = trained
    assert "test (held out)" in output and "trainable parameters: 11,520" in output
    assert (out / "prompt.json").exists() and (out / "prompt.safetensors").exists()


def test_eval_last_line_is_machine_readable(trained, data_dir):
    out, _ = trained
    result = run("eval", out, "--task", "sst2", "--data-dir", data_dir, "--split", "test", "--limit", 12)
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    fields = dict(kv.split("=") for kv in last.split())
    assert set(fields) == {"accuracy", "macro_f1", "examples_per_s"}
    assert 0 <= float(fields["accuracy"]) <= 1 and float(fields["examples_per_s"]) > 0


def test_predict(trained):
    out, _ = trained
    result = run("predict", out, "a gorgeous, witty film", "an utter bore", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [r["input"] for r in rows] == ["a gorgeous, witty film", "an utter bore"]
    assert all(r["label"] in ("0", "1") and abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows)


def test_methods_lists_registered_methods():
    result = run("methods")
    assert result.exit_code == 0
    assert "prompt-tuning" in result.output and "zero-shot" in result.output


def _task(tmp_path, rows, template="{text}\\nLabel:"):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "task.yaml"
    path.write_text(f"name: t\ndata: {{train: {data}}}\ntemplate: \"{template}\"\n"
                    "verbalizer: {a: ' yes', b: ' no'}\n")
    return path


GOOD = [{"text": f"example {i}", "label": "ab"[i % 2]} for i in range(8)]


@pytest.mark.parametrize("case,expected", [
    ("missing file", "data file .*nope.jsonl does not exist"),
    ("missing column", r"data.jsonl:3: no column 'text' for template field '\{text\}'"),
    ("unknown label", r"data.jsonl:2: label 'zzz' is not in the verbalizer"),
    ("empty dataset", "the train data has no examples"),
    ("template field", r"data.jsonl:1: no column 'title' for template field '\{title\}'"),
    ("too few per class", "label 'a' has 4 examples in train, fewer than --shots 5"),
    ("wrong model path", "model './no-such-model': no such file or directory"),
    ("wrong model id", "cannot load model 'no-such-org/no-such-model'"),
    ("unknown method", "--method 'prompt-tunning' is not a method"),
    ("unknown hyper-parameter", "method 'prompt-tuning': lrr: unknown hyper-parameter"),
    ("bad label word", "verbalizer word '' for label 'b' tokenizes to nothing"),
])
def test_bad_input_gives_one_clear_line(case, expected, tmp_path):
    args = {"--shots": 2, "--steps": 1}
    task = _task(tmp_path, GOOD)
    extra: list = []
    if case == "missing file":
        task.write_text(task.read_text().replace("data.jsonl", "nope.jsonl"))
    elif case == "missing column":
        task = _task(tmp_path, GOOD[:2] + [{"txt": "x", "label": "a"}] + GOOD[2:])
    elif case == "unknown label":
        task = _task(tmp_path, GOOD[:1] + [{"text": "x", "label": "zzz"}])
    elif case == "empty dataset":
        task = _task(tmp_path, [])
    elif case == "template field":
        task = _task(tmp_path, GOOD, template="{title}\\nLabel:")
    elif case == "too few per class":
        args["--shots"] = 5
    elif case == "wrong model path":
        extra = ["--model", "./no-such-model"]
    elif case == "wrong model id":
        extra = ["--model", "no-such-org/no-such-model"]
    elif case == "unknown method":
        extra = ["--method", "prompt-tunning"]
    elif case == "unknown hyper-parameter":
        extra = ["-p", "lrr=0.1"]
    elif case == "bad label word":
        task.write_text(task.read_text().replace("b: ' no'", "b: ''"))
    out = tmp_path / "out"
    flat = [x for kv in args.items() for x in kv]
    result = run("train", "--task", task, "--out", out, "--quiet", *flat, *extra)
    assert result.exit_code == 1
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert pytest.importorskip("re").search(expected, lines[0]), lines[0]
    assert not out.exists()  # no partial artifact


def test_artifact_from_another_backbone_is_refused(trained, tiny_llama_dir, data_dir):
    out, _ = trained
    result = run("eval", out, "--data-dir", data_dir, "--limit", 4, "--model", tiny_llama_dir)
    assert result.exit_code == 1
    assert "was trained on backbone 'smollm2-135m'" in result.output and str(tiny_llama_dir) in result.output
    result = run("predict", out, "text", "--model", tiny_llama_dir)
    assert result.exit_code == 1 and "was trained on backbone" in result.output


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "prompttune.cli", "eval", str(tmp_path / "nothing-here")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "not an artifact directory" in proc.stderr


def test_methods_shows_trainable_parameters_for_a_model(monkeypatch):
    result = run("methods", "--model", "smollm2-135m")
    assert result.exit_code == 0, result.output
    assert "11,520" in result.output  # prompt tuning: 20 x 576
    from prompttune import cli
    from prompttune.methods import available_methods

    monkeypatch.setattr(cli.console, "width", 300)  # a wide terminal, whatever this one is
    wide = run("methods", "--model", "minilm-l6")
    assert wide.exit_code == 0, wide.output
    for name in available_methods():
        assert name in wide.output
    assert "46,850" in wide.output  # fine-tune-head on MiniLM: 2 x 6 x 12 x 10 x 32 + 2 x 385
    assert "(needs causal-lm)" in wide.output


def test_decode_shows_nearest_tokens(trained):
    out, _ = trained
    result = run("decode", out, "--top-k", 2)
    assert result.exit_code == 0, result.output
    assert "nearest tokens of 20 prompt vectors" in result.output
    assert result.output.count("(") >= 40  # two tokens with their cosine for each of the 20 vectors


def test_demo_prints_the_majority_rate_beside_both_accuracies(tmp_path):
    """What `make demo` runs, on a small budget: the learning itself is measured in the closing notes and the
    soft-method learning tests; here the table and the machine-readable last line."""
    out = tmp_path / "demo"
    result = run("demo", "--shots", 2, "--steps", 2, "--eval-limit", 20, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "always the majority class" in result.output and "FutureWarning" not in result.output
    last = dict(kv.split("=", 1) for kv in result.output.strip().splitlines()[-1].split())
    assert set(last) == {"majority_acc", "zero_shot_acc", "prompt_tuning_acc", "artifact"}
    assert 0.5 <= float(last["majority_acc"]) <= 1 and (out / "prompt.json").exists()

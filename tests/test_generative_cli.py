"""The command line on generative tasks, end to end on the real SmolLM2-135M and data: `train` shows each
metric and the target NLL, `eval` ends with the machine-readable line, `predict` prints the generated
answers, `export` gives a PEFT adapter that generates exactly what prompttune does, and bad task input
is one clear line with nothing written."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import StoppingCriteria
from typer.testing import CliRunner

import prompttune
from prompttune.cli import app
from prompttune.models.causal_lm import cut_at_stop


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


TINY = ["--shots", 8, "--steps", 4, "--eval-limit", 8, "--n-tokens", 4, "--quiet"]


@pytest.fixture
def wide(monkeypatch):
    """A wide terminal, whatever this one is, so that rich tables show whole column names."""
    from prompttune import cli

    monkeypatch.setattr(cli.console, "width", 300)


@pytest.fixture(scope="module")
def plural(tmp_path_factory, data_dir):
    """A prompt-tuning artifact for ii:singular_to_plural, trained through the CLI: (dir, train's output)."""
    from prompttune import cli

    out = tmp_path_factory.mktemp("gen-cli") / "pt-plural"
    with pytest.MonkeyPatch.context() as patch:  # a wide terminal for this module-scoped run too
        patch.setattr(cli.console, "width", 300)
        result = run("train", "--method", "prompt-tuning", "--task", "ii:singular_to_plural", "--data-dir", data_dir,
                     "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    return out, result.output


def _row(output: str, name: str) -> list[str]:
    """The cells of the scores table's row called `name`."""
    line = next(ln for ln in output.splitlines() if name in ln)
    return [c.strip() for c in re.split(r"[│|┃]", line) if c.strip()]


def test_train_shows_the_primary_metric_and_the_target_nll(plural):
    out, output = plural
    meta = json.loads((out / "prompt.json").read_text())
    assert meta["kind"] == "generation" and meta["primary_metric"] == "exact_match"
    header = _row(output, "examples")
    assert header == ["split", "examples", "exact_match", "target NLL/token"]
    for key, name in (("dev", "dev (k-shot, selection)"), ("eval", "test (held out)")):
        scores = meta["metrics"][key]
        assert _row(output, name)[1:] == [str(scores["n"]), f"{scores['exact_match']:.4f}", f"{scores['nll']:.4f}"]
    assert "trainable parameters: 2,304" in output  # 4 x 576


def test_train_shows_each_metric_of_a_task_with_several(wide, data_dir, tmp_path):
    out = tmp_path / "director"
    result = run("train", "--method", "prompt-tuning", "--task", "mit-movies:director", "--data-dir", data_dir,
                 "--out", out, "--shots", 4, "--dev-shots", 2, "--steps", 1, "--eval-limit", 4, "--n-tokens", 4,
                 "--quiet")
    assert result.exit_code == 0, result.output
    assert _row(result.output, "examples") == ["split", "examples", "f1", "exact_match", "target NLL/token"]
    scores = json.loads((out / "prompt.json").read_text())["metrics"]["eval"]
    assert _row(result.output, "(held out)")[1:] == [
        str(scores["n"]), *(f"{scores[k]:.4f}" for k in ("f1", "exact_match", "nll"))]


def test_eval_prints_each_metric_and_ends_with_the_generation_line(plural, data_dir):
    out, _ = plural
    result = run("eval", out, "--data-dir", data_dir, "--limit", 6)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert "exact_match" in lines[-2] and "target NLL" in lines[-2]  # the summary
    keys = [kv.split("=")[0] for kv in lines[-1].split()]
    assert keys == ["exact_match", "nll", "examples_per_s"]  # the primary metric first
    fields = {k: float(v) for k, v in (kv.split("=") for kv in lines[-1].split())}
    assert 0 <= fields["exact_match"] <= 1 and fields["nll"] > 0 and fields["examples_per_s"] > 0
    recorded = json.loads((out / "prompt.json").read_text())["metrics"]["eval"]
    again = run("eval", out, "--data-dir", data_dir, "--limit", 8)  # what train scored, the same way
    final = dict(kv.split("=") for kv in again.output.strip().splitlines()[-1].split())
    assert final["exact_match"] == f"{recorded['exact_match']:.4f}" and final["nll"] == f"{recorded['nll']:.4f}"


def test_predict_prints_the_generated_answers(plural, backbone):
    out, _ = plural
    inputs = ["cat", "[bold]dog"]  # user text is printed as it is, never read as markup
    expected = prompttune.load(out, model=backbone).generate(inputs)
    result = run("predict", out, *inputs)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2
    for line, answer, text in zip(lines, expected, inputs, strict=True):  # rich expands the tab
        assert re.fullmatch(re.escape(answer.strip()) + r"\s+" + re.escape(text), line), line
    result = run("predict", out, *inputs, "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.strip().splitlines()]
    assert rows == [{"input": t, "output": a} for t, a in zip(inputs, expected, strict=True)]


def test_help_names_the_generative_task_families():
    result = run("train", "--help")
    assert result.exit_code == 0
    assert "ii:<task>" in result.output and "mit-movies:<slot>" in result.output


def test_exported_generative_prompt_generates_the_same_tokens_in_peft(plural, backbone, data_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _ = plural
    result = run("export", out, "--out", tmp_path / "adapter")
    assert result.exit_code == 0, result.output
    base = AutoModelForCausalLM.from_pretrained(backbone.model.name_or_path, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    predictor = prompttune.load(out, model=backbone)
    words = ["cat", "box", "child", "strawberry"]
    ours = predictor.generate(words)
    tok = backbone.tokenizer
    for word, cut in zip(words, ours, strict=True):  # one at a time: no padding question on PEFT's side
        ids = backbone.tokenize([predictor.render(word)])[0]
        seen = SeenTokens()  # our tokens, as HF hands them to a stopping criterion after each step
        full = backbone.generate([predictor.render(word)], predictor.prompt, max_new_tokens=predictor.max_new_tokens,
                                 stop=[], stopping_criteria=seen)[0]
        with torch.no_grad():  # without its KV cache: PEFT's cached decoding behind a prompt-tuning adapter goes
            # wrong after the first new token (huggingface/peft#1391; still so with peft 0.21.2, transformers 5.24)
            tokens = peft_model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                         dtype=torch.long), max_new_tokens=predictor.max_new_tokens,
                                         do_sample=False, use_cache=False, pad_token_id=tok.pad_token_id)[0]
        assert tokens[: len(ids)].tolist() == ids  # PEFT returns the input, then the new tokens
        assert tokens[len(ids):].tolist() == seen.tokens  # token for token
        assert tok.decode(seen.tokens, skip_special_tokens=True) == full
        assert cut_at_stop(full, predictor.stop) == cut  # and the artifact's stop strings cut the same text
    result = run("import", tmp_path / "imported", "--from-peft", tmp_path / "adapter", "--task",
                 "ii:singular_to_plural", "--data-dir", data_dir)  # and back: the same generative artifact
    assert result.exit_code == 0, result.output
    imported = prompttune.load(tmp_path / "imported", model=backbone)
    assert imported.meta["kind"] == "generation" and imported.generate(words) == ours


class SeenTokens(StoppingCriteria):
    """Never stops; keeps the tokens generated so far (HF passes only the new ones when generating from
    embeddings, as prompttune does)."""

    def __init__(self):
        self.tokens: list[int] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.tokens = input_ids[0].tolist()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _generative_task(tmp_path, extra: str = "") -> str:
    data = tmp_path / "plural.jsonl"
    rows = [("cat", "cats"), ("box", "boxes"), ("child", "children"), ("dog", "dogs"), ("city", "cities"),
            ("mouse", "mice")]
    data.write_text("".join(json.dumps({"input": a, "output": b}) + "\n" for a, b in rows))
    path = tmp_path / "task.yaml"
    path.write_text(f"name: plural\ndata: {{train: {data}}}\ntemplate: \"Input: {{input}}\\nOutput:\"\n"
                    f"target: \" {{output}}\"\n{extra}")
    return str(path)


@pytest.mark.parametrize("case,extra,expected", [
    ("verbalizer and target", "verbalizer: {a: ' yes', b: ' no'}\n", "a verbalizer .* or a target .*, not both"),
    ("unknown metric", "metric: bleurt\n", "bleurt"),
    ("user metric that does not import", "metric: 'python:no_such_module_here:score'\n", "no_such_module_here"),
    ("empty stop string", "generation: {stop: ['\\n', '']}\n", "empty stop string"),
    ("classification-only method", "", "cannot learn a prompt for generative task"),
])
def test_bad_generative_input_gives_one_clear_line_and_writes_nothing(case, extra, expected, tmp_path):
    task = _generative_task(tmp_path, extra)
    method = "fine-tune-head" if case == "classification-only method" else "prompt-tuning"
    out = tmp_path / "out"
    result = run("train", "--method", method, "--task", task, "--out", out, "--shots", 2, "--steps", 1, "--quiet")
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and re.search(expected, lines[0]), lines[0]
    assert not out.exists()  # no output dir, no partial artifact

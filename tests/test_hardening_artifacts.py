"""Issue 17, items 13-15, 18, 19: resume, fingerprints, artifacts on disk and data files.

Everything runs on tiny random models of the real architectures (a two-layer Llama with SmolLM2's
tokenizer, a two-layer CLIPModel) and real code paths: the trainer, `prompttune.train`,
`prompttune.load`, the task loaders.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import prompttune
from prompttune.artifact import ARTIFACT_JSON, ARTIFACT_TENSORS, read_artifact, write_artifact
from prompttune.errors import ArtifactError, ConfigError, DataError
from prompttune.models import load_backbone
from prompttune.models.loading import FINGERPRINT_VERSION, legacy_weight_fingerprint
from prompttune.prompts.hard import HardPrompt, split_template
from prompttune.tasks import load_task
from prompttune.training import Evaluation, TrainConfig, train_prompt

FAST = {"steps": 4, "batch_size": 2, "eval_every": 2, "n_tokens": 2, "init": "random"}


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir), device="cpu")


def _toy_task(root, train_rows=None) -> str:
    """A small task file over JSONL data in `root` (absolute paths), returned as the --task value."""
    rows = train_rows or [{"text": f"review number {i}", "label": str(i % 2)} for i in range(12)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    task = root / "toy.yaml"
    task.write_text(f"name: toy\ndata: {{train: {root / 'train.jsonl'}, test: {root / 'test.jsonl'}}}\n"
                    "template: \"{text} It was\"\nverbalizer: {'0': ' bad', '1': ' good'}\n")
    return str(task)


# --------------------------------------------------------------------------- item 13: optimizer state by name
class _TwoParams(torch.nn.Module):
    """`unused` comes first and never gets a gradient, so AdamW keeps state for `used` only."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(3))
        self.used = torch.nn.Parameter(torch.zeros(3))


def _fit(tmp_path, steps_before_crash=None, resume=False):
    torch.manual_seed(0)
    module = _TwoParams()
    targets = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(steps=8, lr=0.1, batch_size=2, eval_every=2, warmup_ratio=0.0)

    def crash(step, loss):
        if step == steps_before_crash:
            raise KeyboardInterrupt

    def loss_fn(batch):
        return ((module.used - targets[list(batch)]) ** 2).mean()

    def eval_fn():
        return Evaluation(0.0, float(((module.used.detach() - targets) ** 2).mean()))

    outcome = train_prompt(module, loss_fn, eval_fn, len(targets), cfg, seed=0, checkpoint_dir=tmp_path,
                           resume=resume, progress=False, callbacks=[crash] if steps_before_crash else [])
    return module, outcome


def test_resume_restores_optimizer_state_onto_the_right_parameters(tmp_path):
    whole, _ = _fit(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "cut", steps_before_crash=5)  # the last checkpoint is step 4
    resumed, _ = _fit(tmp_path / "cut", resume=True)
    assert torch.equal(resumed.used, whole.used)
    assert torch.equal(resumed.unused, torch.zeros(3))


def test_a_checkpoint_of_an_older_version_says_so(tmp_path):
    """Older versions stored the optimizer state by position (and computed the run fingerprint otherwise): resuming
    one must say it is from an older prompttune, not that it belongs to a different run."""
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, steps_before_crash=5)
    (path,) = tmp_path.glob("checkpoint*.safetensors")
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["prompttune"])
    meta["optim_keys"] = [sorted(keys) for keys in meta.pop("optim_state").values()]
    meta["fingerprint"] = "0123456789abcdef"
    save_file(tensors, str(path), metadata={"prompttune": json.dumps(meta)})
    with pytest.raises(ArtifactError, match=r"written by an older prompttune .*use --overwrite"):
        _fit(tmp_path, resume=True)


# --------------------------------------------------------------------------- item 14: the weight fingerprint
def _edit_one_row(model_dir, delta=0.5, row=1):
    path = model_dir / "model.safetensors"
    tensors = load_file(str(path))
    name = next(k for k in tensors if "embed_tokens" in k)
    tensors[name][row] += delta
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_fingerprint_sees_a_sparse_edit_and_ignores_the_load_dtype(tiny_llama_dir, tmp_path):
    copy = tmp_path / "edited"
    shutil.copytree(tiny_llama_dir, copy)
    original = load_backbone(str(copy), device="cpu")
    assert load_backbone(str(copy), device="cpu", dtype="bfloat16").fingerprint == original.fingerprint
    _edit_one_row(copy)  # +0.5 on one embedding row, which the old strided sample never looked at
    edited = load_backbone(str(copy), device="cpu")
    assert edited.fingerprint != original.fingerprint


def test_fingerprint_is_cached_by_file_size_and_mtime(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTTUNE_CACHE", str(tmp_path / "cache"))
    first = load_backbone(str(tiny_llama_dir), device="cpu").fingerprint
    [cache_file] = (tmp_path / "cache" / "fingerprints").iterdir()
    entry = json.loads(cache_file.read_text())["files"]["model.safetensors"]
    weights = tiny_llama_dir / "model.safetensors"
    assert entry["size"] == weights.stat().st_size and entry["mtime_ns"] == weights.stat().st_mtime_ns
    # a later load trusts the cached digest while size and mtime match (so it does not re-read the file) ...
    cached = json.loads(cache_file.read_text())
    cached["files"]["model.safetensors"]["sha256"] = "0" * 64
    cache_file.write_text(json.dumps(cached))
    assert load_backbone(str(tiny_llama_dir), device="cpu").fingerprint != first
    # ... and hashes the file again when they change
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))
    assert load_backbone(str(tiny_llama_dir), device="cpu").fingerprint == first


def _soft_artifact(out, backbone, prompt):
    meta = {"method": "prompt-tuning", "prompt_kind": "soft",
            "backbone": {"id": backbone.model_id, "fingerprint": backbone.fingerprint,
                         "fingerprint_version": FINGERPRINT_VERSION},
            "task": {"name": "toy", "template": "{text} It was", "input_fields": ["text"],
                     "verbalizer": {"0": " bad", "1": " good"}}}
    write_artifact(out, {"prompt": prompt}, meta)
    return meta


def test_artifacts_with_the_old_fingerprint_still_load(tiny, tmp_path):
    old = tmp_path / "old"
    _soft_artifact(old, tiny, torch.randn(2, tiny.hidden_size))
    meta = json.loads((old / ARTIFACT_JSON).read_text())
    del meta["backbone"]["fingerprint_version"]  # as written before fingerprint version 2
    meta["backbone"]["fingerprint"] = legacy_weight_fingerprint(tiny.model)
    (old / ARTIFACT_JSON).write_text(json.dumps(meta))
    assert prompttune.load(old, model=tiny).predict(["fine"])[0] in ("0", "1")
    meta["backbone"]["fingerprint"] = "0123456789abcdef"
    (old / ARTIFACT_JSON).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="was trained on backbone"):
        prompttune.load(old, model=tiny)


# --------------------------------------------------------------------------- item 15: --resume, same run only
def test_resume_refuses_a_finished_artifact_of_another_run(tiny, data_dir, tmp_path):
    out = tmp_path / "run"
    kwargs = {"eval_limit": 8, "progress": False, **FAST}
    prompttune.train("prompt-tuning", tiny, "sst2", data_dir, shots=2, seed=0, out=out, **kwargs)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match=r"different run \(.*seed 0 -> 7") as err:
        prompttune.train("prompt-tuning", tiny, "sst2", data_dir, shots=4, seed=7, out=out, resume=True, **kwargs)
    assert "shots 2 -> 4" in str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_refuses_changed_data(tiny, tmp_path):
    task = _toy_task(tmp_path)
    out = tmp_path / "run"

    def crash(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prompttune.train("prompt-tuning", tiny, task, shots=2, out=out, progress=False, callbacks=[crash], **FAST)
    train_file = tmp_path / "train.jsonl"
    original = train_file.read_text()
    train_file.write_text(original.replace("review number 5", "review number 55"))
    with pytest.raises(ConfigError, match=r"the train data \(.*train.jsonl\) changed: \d+ -> \d+ bytes"):
        prompttune.train("prompt-tuning", tiny, task, shots=2, out=out, resume=True, progress=False, **FAST)
    train_file.write_text(original)  # the same data again: the run continues and finishes
    report = prompttune.train("prompt-tuning", tiny, task, shots=2, out=out, resume=True, progress=False, **FAST)
    assert sorted(p.name for p in out.iterdir()) == [ARTIFACT_JSON, ARTIFACT_TENSORS]
    assert report.meta["run_identity"]["data"]["train"]["size"] == train_file.stat().st_size


# --------------------------------------------------------------------------- item 18: artifacts on disk
def test_artifact_is_swapped_in_whole(tiny, tmp_path):
    out = tmp_path / "art"
    _soft_artifact(out, tiny, torch.zeros(2, tiny.hidden_size))
    (out / "llm_ledger.jsonl").write_text("{}\n")  # a run's other files are carried over
    (out / "checkpoint.safetensors").write_bytes(b"stale")  # its checkpoints are not
    old_json = (out / ARTIFACT_JSON).read_bytes()
    with pytest.raises(TypeError):  # the JSON cannot be written (mixed key types under sort_keys) ...
        write_artifact(out, {"prompt": torch.ones(2, tiny.hidden_size)}, {"bad": {1: 1, "a": 2}})
    assert (out / ARTIFACT_JSON).read_bytes() == old_json  # ... so neither file changed
    assert torch.equal(load_file(str(out / ARTIFACT_TENSORS))["prompt"], torch.zeros(2, tiny.hidden_size))
    _soft_artifact(out, tiny, torch.ones(2, tiny.hidden_size))
    assert sorted(p.name for p in out.iterdir()) == ["llm_ledger.jsonl", ARTIFACT_JSON, ARTIFACT_TENSORS]
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temporary directory left behind


@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)],
                         ids=["022", "027"])
def test_artifact_files_follow_the_umask(tiny, tmp_path, umask, dir_mode, file_mode):
    previous = os.umask(umask)
    try:
        _soft_artifact(tmp_path / "art", tiny, torch.zeros(2, tiny.hidden_size))
        _soft_artifact(tmp_path / "art", tiny, torch.ones(2, tiny.hidden_size))  # and when replaced
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "art").stat().st_mode) == dir_mode
    for name in (ARTIFACT_JSON, ARTIFACT_TENSORS):
        assert stat.S_IMODE((tmp_path / "art" / name).stat().st_mode) == file_mode


def test_training_into_a_directory_keeps_its_dotfiles(tiny, tmp_path):
    """A run's --out that already holds the user's files (a git checkout, a .env) keeps them all."""
    out = tmp_path / "project"
    (out / ".git").mkdir(parents=True)
    (out / ".git" / "config").write_text("[core]\n")
    (out / ".env").write_text("TOKEN=keep\n")
    (out / ".prompt.json.0123456789ab.tmp").write_text("left by a killed run")
    task = _toy_task(tmp_path)
    prompttune.train("prompt-tuning", tiny, task, shots=2, out=out, progress=False, **FAST)
    assert (out / ".git" / "config").read_text() == "[core]\n" and (out / ".env").read_text() == "TOKEN=keep\n"
    assert sorted(p.name for p in out.iterdir()) == [".env", ".git", ARTIFACT_JSON, ARTIFACT_TENSORS]
    assert prompttune.load(out, model=tiny).predict(["fine"])[0] in ("0", "1")


def test_out_may_be_the_working_directory_but_is_never_swapped_or_deleted(tiny, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    task = _toy_task(tmp_path)
    monkeypatch.chdir(work)
    prompttune.train("zero-shot", tiny, task, shots=2, out=".", progress=False)
    assert os.getcwd() == str(work) and os.path.samefile(".", work)  # still the directory we are in
    assert sorted(os.listdir(".")) == ["notes.txt", ARTIFACT_JSON, ARTIFACT_TENSORS]
    os.remove("notes.txt")
    with pytest.raises(ConfigError, match="is the working directory or holds it"):
        prompttune.train("zero-shot", tiny, task, shots=2, out=".", overwrite=True, progress=False)
    with pytest.raises(ConfigError, match="is the working directory or holds it"):
        prompttune.train("zero-shot", tiny, task, shots=2, out="..", overwrite=True, progress=False)
    assert (work / ARTIFACT_JSON).exists() and os.path.samefile(".", work)


# Run where the OS itself refuses the swap: `out` a real mount point (in a private mount namespace), or its
# parent not writable by the (unmapped, so unprivileged) user. The run dir holds only our files, so the swap
# is tried; the artifact must come out whole, in place, with the run's checkpoint and run.json gone.
_WRITE_IN_REFUSING_DIR = """
import os, sys, torch
from pathlib import Path
from prompttune.artifact import write_artifact
out = Path(sys.argv[1])
(out / "run.json").write_text("{}")
(out / "checkpoint.safetensors").write_text("stale")
mounted = os.path.ismount(out)
write_artifact(out, {"prompt": torch.ones(2, 4)}, {"method": "m", "prompt_kind": "soft"})
print(sorted(os.listdir(out)), os.path.ismount(out) == mounted, (out / "prompt.json").read_text().count("soft"))
"""


def _unshare(args: list[str]) -> None:
    probe = subprocess.run(["unshare", *args, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a user namespace here: {probe.stderr.decode().strip()}")


@pytest.mark.parametrize("refusal", ["mount point", "unwritable parent"])
def test_artifact_is_written_in_place_where_the_os_refuses_the_swap(tmp_path, refusal):
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare")
    parent = tmp_path / "parent"
    out = parent / "out"
    out.mkdir(parents=True)
    script = tmp_path / "write.py"
    script.write_text(_WRITE_IN_REFUSING_DIR)
    python = [sys.executable, str(script), str(out)]
    if refusal == "mount point":
        _unshare(["-Urm"])
        command = ["unshare", "-Urm", "sh", "-c", 'mount -t tmpfs none "$1" && shift && exec "$@"', "sh", str(out),
                   *python]
    else:
        parent.chmod(0o555)
        out.chmod(0o777)
        if os.geteuid() == 0:  # root ignores the mode: write as an unmapped user (the owner bits apply)
            _unshare(["-U"])
            command = ["unshare", "-U", *python]
        else:
            command = python
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    finally:
        parent.chmod(0o755)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[0] == "['prompt.json', 'prompt.safetensors'] True 1", done.stdout
    assert os.listdir(parent) == ["out"]  # no temporary directory left beside it


def test_load_checks_tensor_shapes_against_the_backbone(tiny, tmp_path):
    _soft_artifact(tmp_path / "wide", tiny, torch.zeros(4, 100))
    with pytest.raises(ArtifactError, match=rf"tensor 'prompt' .* shape \(4, 100\).* \(n_tokens, {tiny.hidden_size}\)"):
        prompttune.load(tmp_path / "wide", model=tiny)


@pytest.mark.parametrize("corrupt, message", [
    (lambda m: m.update(format_version=99), "format_version 99"),
    (lambda m: m.update(format_version="1"), "'format_version' must be an integer"),
    (lambda m: m.update(backbone="smollm2-135m"), "missing field 'backbone.id'"),
    (lambda m: m["task"].update(template=5), "'task.template' must be a string"),
    (lambda m: m["task"].update(verbalizer=[" bad", " good"]), "'task.verbalizer' must be a mapping"),
    (lambda m: m["task"].update(input_fields="text"), "'task.input_fields' must be a list"),
])
def test_malformed_prompt_json_is_an_artifact_error(tiny, tmp_path, corrupt, message):
    out = tmp_path / "art"
    _soft_artifact(out, tiny, torch.zeros(2, tiny.hidden_size))
    meta = json.loads((out / ARTIFACT_JSON).read_text())
    corrupt(meta)
    (out / ARTIFACT_JSON).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=message):
        prompttune.load(out, model=tiny)


def test_overwrite_refuses_a_directory_prompttune_did_not_write(tiny, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"not a prompttune artifact or run directory \(it holds notes.txt\)"):
        prompttune.train("zero-shot", tiny, _toy_task(tmp_path), shots=2, out=out, overwrite=True, progress=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_clip_artifacts_resume_and_load_checks(tmp_path):
    from prompttune.models.clip import load_clip_backbone
    from prompttune.tasks.images import FASHION_MNIST_CLASSES, FASHION_MNIST_TEMPLATES, ImageSplit, ImageTask
    from prompttune.testing import tiny_clip

    clip = load_clip_backbone(str(tiny_clip(tmp_path / "clip")), device="cpu")
    gen = torch.Generator().manual_seed(0)

    def split(per_class):
        labels = torch.arange(3).repeat_interleave(per_class)
        images = torch.randint(0, 256, (len(labels), 28, 28, 3), dtype=torch.uint8, generator=gen)
        return ImageSplit(labels, [f"toy:{i}" for i in range(len(labels))], array=images)

    task = ImageTask("toy-images", list(FASHION_MNIST_CLASSES[:3]), split(6), split(2), list(FASHION_MNIST_TEMPLATES))
    params = {"steps": 2, "batch_size": 2, "eval_every": 2}
    out = tmp_path / "coop"
    prompttune.train("coop", clip, task, shots=2, seed=0, out=out, base_to_new=False, progress=False, **params)
    with pytest.raises(ConfigError, match="different run"):
        prompttune.train("coop", clip, task, shots=2, seed=1, out=out, base_to_new=False, resume=True,
                         progress=False, **params)
    meta, tensors = read_artifact(out)
    save_file({"ctx": torch.zeros(4, 7)}, str(out / ARTIFACT_TENSORS))
    with pytest.raises(ArtifactError, match=r"tensor 'ctx' .* shape \(4, 7\)"):
        prompttune.load(out, model=clip, task=task)


# --------------------------------------------------------------------------- item 19: data files
def _task_over(tmp_path, data_name, template="{text} It was"):
    task = tmp_path / "task.yaml"
    task.write_text(f"name: t\ndata: {{train: {tmp_path / data_name}}}\ntemplate: \"{template}\"\n"
                    "verbalizer: {'0': ' bad', '1': ' good'}\n")
    return str(task)


def test_csv_with_a_byte_order_mark_loads(tmp_path):
    (tmp_path / "d.csv").write_text("label,text\n0,dull\n1,great\n", encoding="utf-8-sig")
    task = load_task(_task_over(tmp_path, "d.csv"))
    assert [(ex.label, ex.fields["text"]) for ex in task.split("train")] == [("0", "dull"), ("1", "great")]


def test_short_csv_row_names_file_and_line(tmp_path):
    (tmp_path / "d.csv").write_text("label,text\n0,dull\n1\n")
    message = rf"{tmp_path / 'd.csv'}:3: a short row, 1 of the header's 2 columns \(label, text\); missing: text"
    with pytest.raises(DataError, match=message):
        load_task(_task_over(tmp_path, "d.csv"))


def test_json_file_holding_one_array_loads(tmp_path):
    rows = [{"text": "dull", "label": 0}, {"text": "great", "label": 1}]
    (tmp_path / "d.json").write_text(json.dumps(rows, indent=2))
    examples = load_task(_task_over(tmp_path, "d.json")).split("train")
    assert [(ex.label, ex.fields["text"]) for ex in examples] == [("0", "dull"), ("1", "great")]
    assert [ex.origin.rsplit(":", 1)[1] for ex in examples] == ["2", "6"]  # the line each object starts on
    (tmp_path / "d.json").write_text('[{"text": "dull", "label": 0},\n 7]')
    with pytest.raises(DataError, match=r"d.json:2: each record must be a JSON object"):
        load_task(_task_over(tmp_path, "d.json"))


def test_split_template_handles_format_specs():
    assert split_template("Review: {text:}\nSentiment:") == ("Review: {text:}", "\nSentiment:")
    assert split_template("{a!s:>{w}} and {{b}} {c:} cue") == ("{a!s:>{w}} and {{b}} {c:}", " cue")
    prompt = HardPrompt.build("Review: {text:} It was", separator=" ||")
    assert prompt.template.format(text="fine") == "Review: fine || It was"

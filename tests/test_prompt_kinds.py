"""Prompt kinds in one table: a new `prompt_kind` is one registered entry, and artifacts of it are checked,
read and applied with no other change; unknown kinds are refused by name."""

from __future__ import annotations

import pytest
import torch

from prompttune.artifact import (
    ARTIFACT_JSON,
    backbone_meta,
    check_tensors,
    prompt_from_tensors,
    read_artifact,
    write_artifact,
)
from prompttune.errors import ArtifactError
from prompttune.models import DeltaPrompt
from prompttune.prompts import PromptKind, get_prompt_kind, prompt_kinds, register_prompt_kind
from prompttune.prompts.kinds import PROMPT_KINDS, kind_of_prompt

BUILT_IN = ("none", "soft", "kv", "dept", "instance", "encoder-head", "hard", "boosted", "clip")
TASK = {"name": "toy", "template": "{text} It was", "input_fields": ["text"],
        "verbalizer": {"negative": " bad", "positive": " good"}}


@pytest.fixture
def scaled_kind():
    """A new prompt kind, registered for one test: a soft prompt times a learned scalar."""
    kind = register_prompt_kind(PromptKind(
        "scaled-soft", shapes=lambda bb, n_labels: {"prompt": ("n_tokens", str(bb.hidden_size)), "scale": ("1",)},
        build=lambda tensors, device, text: (tensors["prompt"] * tensors["scale"]).to(device)))
    yield kind
    PROMPT_KINDS.pop(kind.name)


def _meta(backbone, kind: str) -> dict:
    return {"method": "test", "prompt_kind": kind, "backbone": backbone_meta(backbone), "task": dict(TASK)}


def test_every_built_in_kind_is_registered():
    assert set(BUILT_IN) <= set(prompt_kinds())
    assert {k for k in BUILT_IN if get_prompt_kind(k).mixable} == {"none", "hard", "soft"}
    assert {k for k in BUILT_IN if get_prompt_kind(k).needs_text} == {"hard", "boosted"}


def test_a_new_kind_is_one_entry(backbone, scaled_kind, tmp_path):
    prompt = torch.randn(3, backbone.hidden_size) * 0.02
    tensors = {"prompt": prompt, "scale": torch.tensor([0.5])}
    write_artifact(tmp_path / "art", tensors, _meta(backbone, "scaled-soft"))
    meta, read = read_artifact(tmp_path / "art")  # prompt.json's checks know the kind
    check_tensors(meta, read, backbone, "art")
    applied = prompt_from_tensors(meta["prompt_kind"], read, backbone.device)
    torch.testing.assert_close(applied, prompt * 0.5)
    # the applied prompt is what the backbone scores with: the same as the equivalent soft prompt
    ids = backbone.tokenize(["a gripping, funny film It was", "dull and far too long It was"])
    words = backbone.label_words([[" bad"], [" good"]], ["negative", "positive"])
    torch.testing.assert_close(backbone.score(ids, words, applied),
                               backbone.score(ids, words, prompt_from_tensors("soft", {"prompt": prompt * 0.5})))


def test_a_new_kinds_shapes_are_checked(backbone, scaled_kind):
    meta = _meta(backbone, "scaled-soft")
    with pytest.raises(ArtifactError, match=r"a 'scaled-soft' artifact needs the tensor 'scale'"):
        check_tensors(meta, {"prompt": torch.zeros(3, backbone.hidden_size)}, backbone, "art")
    with pytest.raises(ArtifactError, match=r"tensor 'scale' .* shape \(2,\).* needs a float tensor of shape \(1\)"):
        check_tensors(meta, {"prompt": torch.zeros(3, backbone.hidden_size), "scale": torch.ones(2)}, backbone, "art")


def test_unknown_kinds_are_refused_by_name(backbone, tmp_path):
    with pytest.raises(ArtifactError, match=r"prompt_kind 'sparse' is not known to this version \(known: none, "):
        get_prompt_kind("sparse")
    write_artifact(tmp_path / "art", {}, _meta(backbone, "sparse"))
    with pytest.raises(ArtifactError, match=rf"{ARTIFACT_JSON}: prompt_kind 'sparse' is not known to this version"):
        read_artifact(tmp_path / "art")


def test_trained_prompts_save_as_their_kind_and_rebuild(backbone):
    """`kind_of_prompt(p).save(p)` is the inverse of `build`: what prompt tuning's methods save."""
    hidden = backbone.hidden_size
    soft = torch.randn(2, hidden)
    dept = DeltaPrompt(torch.randn(2, hidden), torch.randn(5, hidden))
    kv = prompt_from_tensors("kv", {"keys": torch.randn(30, 3, 2, 64), "values": torch.randn(30, 3, 2, 64)})
    for prompt, name in ((soft, "soft"), (dept, "dept"), (kv, "kv")):
        kind = kind_of_prompt(prompt)
        assert kind.name == name
        tensors = kind.save(prompt)
        check_tensors({"prompt_kind": name, "task": TASK}, tensors, backbone, name)
        rebuilt = kind.build(tensors, None, None)
        torch.testing.assert_close(rebuilt if name != "dept" else (rebuilt.embeddings, rebuilt.input_delta),
                                   prompt if name != "dept" else (dept.embeddings, dept.input_delta))


def test_peft_export_is_asked_of_the_kind():
    hidden = 8
    prompt = torch.randn(2, hidden)
    assert get_prompt_kind("soft").peft_rows({"prompt": prompt}).peft_type == "PROMPT_TUNING"
    dept = get_prompt_kind("dept")
    assert dept.peft_rows({"prompt": prompt, "input_delta": torch.zeros(4, hidden)}).peft_type == "PROMPT_TUNING"
    assert dept.peft_rows({"prompt": prompt, "input_delta": torch.ones(4, hidden)}) is None
    kv = get_prompt_kind("kv").peft_rows({"keys": torch.randn(3, 2, 5, 4), "values": torch.randn(3, 2, 5, 4)})
    assert kv.peft_type == "PREFIX_TUNING" and kv.rows.shape == (5, 3 * 2 * 2 * 4)
    assert get_prompt_kind("none").peft_rows({}) is None and get_prompt_kind("none").no_peft


def test_clip_kind_checks_tensors_against_its_prompt_shape(tmp_path):
    from prompttune.models.clip import load_clip_backbone
    from prompttune.prompts.clip import ClipPrompt, PromptShape
    from prompttune.testing import tiny_clip

    clip = load_clip_backbone(str(tiny_clip(tmp_path / "clip")), device="cpu")
    meta = {"prompt_kind": "clip", "prompt_shape": PromptShape().to_json(), "task": {"trained_classes": [0, 1, 2]}}
    check_tensors(meta, ClipPrompt(PromptShape(), clip, 3).state_dict(), clip, "art")
    with pytest.raises(ArtifactError, match=r"tensor 'ctx' .* shape \(4, 7\)"):
        check_tensors(meta, {"ctx": torch.zeros(4, 7)}, clip, "art")
    with pytest.raises(ArtifactError, match="missing tensor 'ctx' that its prompt_shape needs"):
        check_tensors(meta, {}, clip, "art")
    assert prompt_from_tensors("clip", {}) is None  # applied by its predictor

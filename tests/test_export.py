"""HF PEFT interop: an exported soft prompt loads in PeftModel and gives prompttune's label scores."""

from __future__ import annotations

import pytest
import torch

import prompttune
from prompttune.export import export_peft, import_peft


@pytest.fixture(scope="module")
def tuned(backbone, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "pt"
    prompttune.train("lopt", backbone, "sst2", data_dir, shots=4, seed=0, out=out, steps=4, eval_every=2,
                     eval_limit=8, progress=False)
    return out


def test_exported_prompt_loads_in_peft_with_identical_label_scores(tuned, backbone, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = export_peft(tuned, tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(backbone.model.name_or_path, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    predictor = prompttune.load(tuned, model=backbone)
    texts = ["a gorgeous, witty film", "an utter bore from start to finish", "fine"]
    ids = backbone.tokenize([predictor.render(t) for t in texts])
    label_ids = torch.tensor([w[0][0] for w in predictor.label_words.words])
    n_virtual = predictor.prompt.shape[0]
    with torch.no_grad():
        ours = backbone.score(ids, predictor.label_words, predictor.prompt)
        for row, x in zip(ours, ids, strict=True):  # one at a time: no padding question on PEFT's side
            logits = peft_model(input_ids=torch.tensor([x])).logits[0]
            assert logits.shape[0] == n_virtual + len(x)
            assert torch.allclose(logits[-1, label_ids], row, atol=1e-4)


def test_import_round_trip_gives_identical_scores(tuned, backbone, data_dir, tmp_path):
    adapter = export_peft(tuned, tmp_path / "adapter")
    imported = import_peft(adapter, tmp_path / "imported", "sst2", data_dir)
    texts = ["a gorgeous, witty film", "an utter bore"]
    a = prompttune.load(tuned, model=backbone).scores(texts)
    b = prompttune.load(imported, model=backbone).scores(texts)
    assert torch.equal(a, b)


@pytest.mark.parametrize("method,extra", [("p-tuning-v2", {}), ("prefix-tuning", {"embed_dim": 16, "hidden": 16})])
def test_deep_prompt_exports_as_peft_prefix_tuning_with_identical_scores(method, extra, backbone, data_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    art = tmp_path / method
    prompttune.train(method, backbone, "sst2", data_dir, shots=2, seed=0, out=art, steps=2, eval_every=2,
                     eval_limit=4, n_tokens=5, progress=False, **extra)
    adapter = export_peft(art, tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(backbone.model.name_or_path, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    assert peft_model.peft_config["default"].peft_type.value == "PREFIX_TUNING"
    predictor = prompttune.load(art, model=backbone)
    texts = ["a gorgeous, witty film", "an utter bore from start to finish"]
    ids = backbone.tokenize([predictor.render(t) for t in texts])
    label_ids = torch.tensor([w[0][0] for w in predictor.label_words.words])
    with torch.no_grad():
        ours = backbone.score(ids, predictor.label_words, predictor.prompt)
        for row, x in zip(ours, ids, strict=True):
            logits = peft_model(input_ids=torch.tensor([x])).logits[0]
            assert torch.allclose(logits[-1, label_ids], row, atol=1e-4)
    imported = import_peft(adapter, tmp_path / "imported", "sst2", data_dir)  # and back, exactly
    assert torch.equal(prompttune.load(imported, model=backbone).scores(texts), predictor.scores(texts))


def test_export_refuses_what_peft_cannot_express(backbone, data_dir, tmp_path):
    prompttune.train("zero-shot", backbone, "sst2", data_dir, shots=2, out=tmp_path / "zs", eval_limit=4,
                     progress=False)
    with pytest.raises(prompttune.PromptTuneError, match=r"cannot be exported to PEFT: it learned nothing"):
        export_peft(tmp_path / "zs", tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    with pytest.raises(prompttune.PromptTuneError, match="not a PEFT adapter directory"):
        import_peft(tmp_path / "zs", tmp_path / "imp", "sst2", data_dir)

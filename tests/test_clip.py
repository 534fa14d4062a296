"""CLIP prompt learning: mechanics on a tiny random CLIPModel, learning on the LiT-style MiniLM dual encoder.

No pretrained CLIP can be installed here. Every method's mechanics (shapes, save/load/resume, the
base-to-new bookkeeping, the feature cache) run on a two-layer `CLIPModel` of the real architecture;
learning is proven on `prompttune.testing.lit_fashion_model()`, whose text tower is the real
pretrained MiniLM (see that module).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import prompttune
from helpers import assert_resume_is_bit_identical
from prompttune.errors import ConfigError, DataError
from prompttune.models.clip import load_clip_backbone
from prompttune.tasks.images import load_image_task
from prompttune.testing import lit_fashion_model, tiny_clip

CLIP_METHODS = ["zero-shot-clip", "coop", "cocoop", "kgcoop", "prograd", "maple", "promptsrc", "tpt"]
SMALL = {"steps": 4, "batch_size": 4, "eval_every": 2}  # mechanics only: a few steps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_clip_backbone(str(tiny_clip(tmp_path_factory.mktemp("tiny-clip"))), device="cpu")


@pytest.fixture(scope="module")
def fashion(fashion_mnist_installed):
    return load_image_task("fashion-mnist")


def _params(method: str) -> dict:
    if method == "zero-shot-clip":
        return {"ensemble": "zpe"}
    if method == "tpt":
        return {"views": 4, "select": 0.5}
    return dict(SMALL)


def test_towers_match_transformers(tiny):
    """Our layer-by-layer towers give exactly what CLIPModel's own feature functions give."""
    texts = ["a photo of a coat.", "a black and white photo of a ankle boot."]
    tok = tiny.tokenizer(texts, padding=True, return_tensors="pt")
    ref_text = tiny.model.get_text_features(**tok).pooler_output
    assert torch.allclose(tiny.encode_texts(texts), ref_text, atol=1e-5)
    images = torch.randint(0, 256, (3, 28, 28, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ref_image = tiny.model.get_image_features(pixel_values=tiny.preprocess(images)).pooler_output
    assert torch.allclose(tiny.image_features(images), ref_image, atol=1e-5)


@pytest.mark.parametrize("method", CLIP_METHODS)
def test_every_method_saves_loads_and_scores_base_and_new(method, tiny, fashion, tmp_path):
    report = prompttune.train(method, tiny, fashion, shots=2, seed=0, out=tmp_path / method, eval_limit=3,
                        progress=False, **_params(method))
    meta = report.meta
    # base-to-new bookkeeping: trained on the 5 base classes only, scored on 3 test images of each class
    assert meta["task"]["trained_classes"] == fashion.base_classes
    assert meta["metrics"]["eval"]["base"]["n"] == 15 and meta["metrics"]["eval"]["new"]["n"] == 15
    base, new = meta["metrics"]["eval"]["base"]["accuracy"], meta["metrics"]["eval"]["new"]["accuracy"]
    assert meta["metrics"]["eval"]["hm"] == pytest.approx(0 if base + new == 0 else 2 * base * new / (base + new))
    predictor = prompttune.load(report.out_dir, tiny, task=fashion)
    idx = fashion.test_indices(fashion.base_classes, 3)
    assert predictor.accuracy(fashion.test, idx, fashion.base_classes) == pytest.approx(base)
    shape = meta.get("prompt_shape")
    if method == "maple":  # coupled: vision prompts are made from the text prompts at every prompted layer
        assert shape["coupled"] and shape["vision_depth"] == 2 and shape["text_depth"] == 1
        assert len(predictor.prompt.vision_prompts()) == 2
    if method == "promptsrc":
        assert shape["vision_depth"] == 2 and not shape["coupled"]
    if method == "tpt":  # the context is tuned per image and reset after each
        assert torch.equal(predictor.prompt.ctx, prompttune.load(report.out_dir, tiny, task=fashion).prompt.ctx)
    if method in ("coop", "cocoop", "kgcoop", "prograd", "maple", "promptsrc"):
        assert meta["trainable_parameters"] > 0
        assert [h["step"] for h in meta["history"]] == list(range(5))


@pytest.mark.parametrize("method", ["coop", "promptsrc", "maple"])
def test_resume_is_bit_identical(method, tiny, fashion, tmp_path):
    """Killed after step 3 and resumed = uninterrupted (PromptSRC's running average and MaPLe's couplers too)."""
    assert_resume_is_bit_identical(method, tmp_path, 3, model=tiny, task=fashion, shots=2, seed=1, eval_limit=2,
                                   progress=False, steps=6, batch_size=4, eval_every=2)


def test_class_specific_context_has_no_new_class_score(tiny, fashion, tmp_path):
    report = prompttune.train("coop", tiny, fashion, shots=2, out=tmp_path / "csc", eval_limit=2, progress=False,
                        class_specific=True, **SMALL)
    assert report.meta["prompt_shape"]["class_specific"]
    assert np.isnan(report.meta["metrics"]["eval"]["new"]["accuracy"])
    predictor = prompttune.load(report.out_dir, tiny, task=fashion)
    with pytest.raises(ConfigError, match="class-specific"):
        predictor.class_features(fashion.new_classes)


def test_feature_cache_is_content_addressed(tiny, tmp_path, monkeypatch):
    """Features are computed once per image content: a renamed copy of the data hits the cache."""
    from prompttune.models import feature_cache

    monkeypatch.setenv("PROMPTTUNE_CACHE", str(tmp_path / "cache"))
    feature_cache.clear_memory()
    root = _image_folder(tmp_path / "a", per_class=3)
    task = load_image_task(root)
    calls = []
    real = tiny.image_features
    monkeypatch.setattr(tiny, "image_features", lambda images, batch_size=256: calls.append(len(images))
                        or real(images, batch_size))
    idx = list(range(len(task.train)))
    first = feature_cache.cached_image_features(tiny, task.train, idx)
    assert calls == [len(idx)] and len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 1
    feature_cache.clear_memory()
    (tmp_path / "a").rename(tmp_path / "b")
    moved = load_image_task(tmp_path / "b")
    again = feature_cache.cached_image_features(tiny, moved.train, idx)
    assert calls == [len(idx)] and torch.equal(first, again)  # read back from disk, not recomputed
    feature_cache.clear_memory()


def _image_folder(root, per_class=3, classes=("coat", "bag")):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_image_folder_and_csv_inputs(tmp_path, caplog):
    root = _image_folder(tmp_path / "imgs", per_class=5)
    Image.fromarray(np.full((12, 16), 80, dtype=np.uint8), mode="L").save(root / "coat" / "gray.png")
    Image.fromarray(np.zeros((10, 10, 4), dtype=np.uint8), mode="RGBA").save(root / "bag" / "alpha.png")
    (root / "bag" / "notes.txt").write_text("not an image")
    (root / "bag" / "broken.png").write_bytes(b"\x89PNG garbage")
    with caplog.at_level(logging.WARNING):
        task = load_image_task(root)
    assert "skipped 2 unreadable or non-image file(s)" in caplog.text
    assert task.classes == ["bag", "coat"] and len(task.train) + len(task.test) == 12
    images = {o: task.train.images([i])[0] for i, o in enumerate(task.train.origins)}
    images.update({o: task.test.images([i])[0] for i, o in enumerate(task.test.origins)})
    gray = next(v for k, v in images.items() if k.endswith("gray.png"))
    assert gray.shape[-1] == 3 and int(gray.float().std(dim=-1).max()) == 0  # grayscale -> RGB
    alpha = next(v for k, v in images.items() if k.endswith("alpha.png"))
    assert alpha.shape[-1] == 3 and int(alpha.min()) == 255  # transparent -> white

    rows = [("coat/0.png", "coat", "train"), ("bag/0.png", "bag", "train"), ("coat/1.png", "coat", "test"),
            ("bag/1.png", "bag", "test"), ("bag/2.png", "bag", "")]  # a blank split: in neither
    with (root / "data.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    task = load_image_task(root / "data.csv")
    assert len(task.train) == 2 and len(task.test) == 2 and task.classes == ["bag", "coat"]


def test_bad_image_inputs_are_clear(tmp_path):
    empty = _image_folder(tmp_path / "empty", per_class=2)
    (empty / "dress").mkdir()
    (empty / "dress" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="dress: class folder has no readable images"):
        load_image_task(empty)
    split = tmp_path / "split"
    _image_folder(split / "train", per_class=2)
    _image_folder(split / "test", per_class=1, classes=("coat", "sandal"))
    with pytest.raises(DataError, match=r"sandal of the test split are not in the class list \(coat, bag\)|"
                                        r"sandal of the test split are not in the class list \(bag, coat\)"):
        load_image_task(split)
    with pytest.raises(DataError, match="does not exist"):
        load_image_task(tmp_path / "nowhere.csv")
    root = _image_folder(tmp_path / "c", per_class=1)
    (root / "l.csv").write_text("path,label\ncoat/0.png,coat\nbag/9.png,bag\n")
    with pytest.raises(DataError, match=r"l.csv:3: image file .*bag/9.png does not exist"):
        load_image_task(root / "l.csv")
    (root / "m.csv").write_text("path,label\ncoat/0.png,coat\nbag/0.png,shoe\n")
    (root / "task.yaml").write_text("train: .\ntest: m.csv\nclasses: [coat, bag]\n")
    (root / "l.csv").unlink()
    with pytest.raises(DataError, match=r"m.csv:3: label 'shoe' is not in the class list \(coat, bag\)"):
        load_image_task(root / "task.yaml")


def test_cli_trains_a_clip_prompt(tiny, tmp_path, data_dir, fashion_mnist_installed):
    from prompttune.cli import app

    result = CliRunner().invoke(app, ["train", "--method", "coop", "--model", tiny.model_id, "--task",
                                      "fashion-mnist", "--shots", "2", "--steps", "2", "--batch-size", "4",
                                      "--eval-limit", "2", "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "harmonic mean" in result.output and (tmp_path / "run" / "prompt.json").exists()
    trained = prompttune.load(tmp_path / "run", tiny).meta["metrics"]["eval"]
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "run"), "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == (f"base={trained['base']['accuracy']:.4f} "
                                                       f"new={trained['new']['accuracy']:.4f} hm={trained['hm']:.4f}")
    image = tmp_path / "coat.png"
    Image.fromarray(load_image_task("fashion-mnist").test.images([0])[0].numpy()).save(image)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(image), "--json"])
    assert result.exit_code == 0, result.output
    probabilities = json.loads(result.output.strip().splitlines()[-1])["probabilities"]
    assert len(probabilities) == 10 and sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / "nothing.png")])
    assert result.exit_code != 0 and "not a readable image file" in result.output
    result = CliRunner().invoke(app, ["train", "--method", "coop", "--model", tiny.model_id, "--task",
                                      str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "not a built-in" in result.output
    result = CliRunner().invoke(app, ["train", "--method", "coop", "--model", "smollm2-135m", "--task",
                                      "fashion-mnist", "--out", str(tmp_path / "y")])
    assert result.exit_code != 0 and "CLIP methods need a CLIP-style dual encoder" in result.output
    result = CliRunner().invoke(app, ["train", "--method", "prompt-tuning", "--model", tiny.model_id, "--task",
                                      "sst2", "--data-dir", str(data_dir), "--out", str(tmp_path / "z")])
    assert result.exit_code != 0 and "is a CLIP-style dual encoder" in result.output


@pytest.fixture(scope="module")
def lit(fashion_mnist_installed):
    return load_clip_backbone(str(lit_fashion_model()), device="cpu")


def test_coop_beats_zero_shot_on_held_out_base_classes(lit, fashion, tmp_path):
    """CoOp 16-shot (seed 0) against the hand-written template, on 200 held-out test images per base class."""
    zs = prompttune.train("zero-shot-clip", lit, fashion, shots=16, seed=0, out=tmp_path / "zs", eval_limit=200,
                          progress=False)
    coop = prompttune.train("coop", lit, fashion, shots=16, seed=0, out=tmp_path / "coop", eval_limit=200,
                            progress=False)
    zs_base = zs.meta["metrics"]["eval"]["base"]["accuracy"]
    coop_base = coop.meta["metrics"]["eval"]["base"]["accuracy"]
    assert coop.meta["metrics"]["eval"]["base"]["n"] == 1000
    assert coop_base > zs_base + 0.05, (zs_base, coop_base)
    # new classes were never trained on: both are scored, among the 5 new classes (chance 0.2)
    assert zs.meta["metrics"]["eval"]["new"]["accuracy"] > 0.2


def test_bench_grid_runs_clip_methods(tiny, tmp_path, fashion_mnist_installed):
    """CLIP methods are bench cells like any other: the recorded accuracy is the base/new harmonic mean."""
    from prompttune.bench import ResultStore, build_report, load_grid, run_grid

    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(f"""models: [{tiny.model_id}]
tasks: [fashion-mnist]
shots: [2]
seeds: [0, 1]
eval_limit: 2
methods:
  - zero-shot-clip
  - {{name: coop, steps: 2, batch_size: 4}}
""")
    summary = run_grid(load_grid(grid_file), tmp_path / "runs.db")
    assert summary.line() == "runs=4 done=4 failed=0 skipped=0"
    rows = ResultStore(tmp_path / "runs.db").rows("done")
    for row in rows:
        m = row["metrics"]
        assert row["accuracy"] == pytest.approx(m["eval"]["hm"]) and row["eval_size"] == 20
    assert "coop" in build_report(tmp_path / "runs.db").markdown_table()
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"models: [{tiny.model_id}]\ntasks: [fashion-mnist]\nshots: [2]\nseeds: [0]\n"
                   "methods: [prompt-tuning]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:5: methods\[0\]: method 'prompt-tuning' needs a text task"):
        load_grid(bad)


def _png_base64(image: torch.Tensor, mode: str = "RGB") -> str:
    import base64
    import io

    buffer = io.BytesIO()
    Image.fromarray(image.numpy()).convert(mode).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_serve_classifies_base64_images_with_clip_artifacts(tiny, fashion, tmp_path, tiny_llama_dir, data_dir):
    """`prompttune serve` over a CLIP model: /v1/classify takes base64 images and gives the predictor's numbers."""
    from fastapi.testclient import TestClient

    from prompttune.api import serving_engine
    from prompttune.cli import app
    from prompttune.serve import create_app

    prompttune.train("coop", tiny, fashion, shots=2, out=tmp_path / "coop", eval_limit=2, progress=False,
                     steps=2, batch_size=4)
    prompttune.train("zero-shot-clip", tiny, fashion, shots=2, out=tmp_path / "zs", eval_limit=2, progress=False)
    engine = serving_engine([str(tmp_path / "coop"), f"hand={tmp_path / 'zs'}"], tiny)
    client = TestClient(create_app(engine, api_key="k"))
    auth = {"Authorization": "Bearer k"}
    models = {m["id"]: m for m in client.get("/v1/models", headers=auth).json()["data"]}
    assert set(models) == {"coop", "hand"} and models["coop"]["labels"] == fashion.classes

    images = fashion.test.images([0, 1, 2])
    inputs = [_png_base64(images[0]), "data:image/png;base64," + _png_base64(images[1]),
              {"image": _png_base64(images[2], "RGBA")}]  # opaque RGBA: the same pixels once composited
    reply = client.post("/v1/classify", json={"model": "coop", "input": inputs}, headers=auth)
    assert reply.status_code == 200, reply.text
    predictor = prompttune.load(tmp_path / "coop", tiny)
    expected = predictor.logits(fashion.test, [0, 1, 2], predictor.all_classes()).softmax(-1)  # the cached path
    for row, want in zip(reply.json()["data"], expected, strict=True):
        assert list(row["scores"]) == fashion.classes
        assert torch.allclose(torch.tensor(list(row["scores"].values())), want, atol=1e-5)
        assert row["label"] == fashion.classes[int(want.argmax())]
    assert engine.stats["rows"] == 3

    def refused(body: dict, path: str = "/v1/classify") -> tuple[int, str]:
        r = client.post(path, json=body, headers=auth)
        return r.status_code, r.json()["error"]["message"]

    status, message = refused({"model": "coop", "input": ["%%%"]})
    assert status == 400 and message.startswith("input[0]: not valid base64")
    status, message = refused({"model": "hand", "input": [inputs[0], "aGVsbG8="]})  # b"hello"
    assert status == 400 and message.startswith("input[1]: not a readable image")
    assert refused({"model": "coop", "input": [{"img": inputs[0]}]})[0] == 400
    assert refused({"model": "nope", "input": inputs[:1]})[0] == 404
    status, message = refused({"model": "coop", "prompt": "hi"}, "/v1/completions")
    assert status == 400 and "classifies images" in message
    engine.close()

    prompttune.train("zero-shot", str(tiny_llama_dir), "sst2", data_dir, shots=2, out=tmp_path / "text",
                     eval_limit=2, progress=False)
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "coop"), str(tmp_path / "text")])
    assert result.exit_code != 0 and "cannot be served together" in result.output


def _open_clip_layout(model) -> dict[str, torch.Tensor]:
    """A `CLIPModel`'s weights under open_clip's names and layout (fused q/k/v, [in, out] projections)."""
    sd, out = model.state_dict(), {}
    blocks = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
              "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for tower, prefix, cfg in (("text_model", "", model.config.text_config),
                               ("vision_model", "visual.", model.config.vision_config)):
        for i in range(cfg.num_hidden_layers):
            src, dst = f"{tower}.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
            for kind in ("weight", "bias"):
                out[f"{dst}attn.in_proj_{kind}"] = torch.cat([sd[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"])
                for oc, hf in blocks.items():
                    out[f"{dst}{oc}.{kind}"] = sd[f"{src}{hf}.{kind}"]
    for kind in ("weight", "bias"):
        out[f"ln_final.{kind}"] = sd[f"text_model.final_layer_norm.{kind}"]
        out[f"visual.ln_pre.{kind}"] = sd[f"vision_model.pre_layrnorm.{kind}"]
        out[f"visual.ln_post.{kind}"] = sd[f"vision_model.post_layernorm.{kind}"]
    out |= {"token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
            "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
            "text_projection": sd["text_projection.weight"].T.contiguous(), "logit_scale": sd["logit_scale"],
            "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
            "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
            "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
            "visual.proj": sd["visual_projection.weight"].T.contiguous(),
            "attn_mask": torch.full((32, 32), float("-inf")).triu(1)}  # older checkpoints carry the causal mask
    return out


def _open_clip_image_features(state: dict, pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """open_clip's ViT forward written from its own parameters (quick GELU, class-token pooling)."""
    import torch.nn.functional as F

    conv = state["visual.conv1.weight"]
    width = conv.shape[0]
    x = F.conv2d(pixels, conv, stride=conv.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([state["visual.class_embedding"].expand(len(x), 1, -1), x], 1) + state["visual.positional_embedding"]

    def ln(t, name):
        return F.layer_norm(t, (width,), state[f"{name}.weight"], state[f"{name}.bias"])

    x = ln(x, "visual.ln_pre")
    i = 0
    while f"visual.transformer.resblocks.{i}.ln_1.weight" in state:
        p = f"visual.transformer.resblocks.{i}."
        h = ln(x, p + "ln_1").transpose(0, 1)
        attn = F.multi_head_attention_forward(
            h, h, h, width, heads, state[p + "attn.in_proj_weight"], state[p + "attn.in_proj_bias"], None, None,
            False, 0.0, state[p + "attn.out_proj.weight"], state[p + "attn.out_proj.bias"], need_weights=False)[0]
        x = x + attn.transpose(0, 1)
        h = F.linear(ln(x, p + "ln_2"), state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"])
        x = x + F.linear(h * torch.sigmoid(1.702 * h), state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
        i += 1
    return ln(x[:, 0], "visual.ln_post") @ state["visual.proj"]


def test_open_clip_checkpoint_runs_as_the_same_clip_backbone(tiny, fashion, tmp_path, monkeypatch):
    """An open_clip-layout checkpoint (Hub repository layout) loads as `open_clip:DIR`, converted once."""
    import shutil

    from safetensors.torch import save_file

    from prompttune.errors import ModelError
    from prompttune.models import load_backbone

    monkeypatch.setenv("PROMPTTUNE_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "oc"
    repo.mkdir()
    state = _open_clip_layout(tiny.model)
    save_file(state, str(repo / "open_clip_model.safetensors"))
    (repo / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 16, "quick_gelu": True,
                      "vision_cfg": {"image_size": 28, "layers": 2, "width": 32, "patch_size": 7, "head_width": 16},
                      "text_cfg": {"context_length": 32, "width": 32, "heads": 2, "layers": 2}},
        "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    for f in Path(tiny.model_id).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(f, repo / f.name)
    source = f"open_clip:{repo}"
    oc = load_clip_backbone(source, device="cpu")
    assert oc.model_id == source
    images = fashion.test.images(list(range(4)))
    features = oc.image_features(images)
    assert torch.allclose(features, tiny.image_features(images), atol=1e-5)
    reference = _open_clip_image_features(state, oc.preprocess(images).float(), heads=2)
    assert torch.allclose(features, reference, atol=1e-4)
    texts = ["a photo of a coat.", "a photo of a bag."]
    assert torch.allclose(oc.encode_texts(texts), tiny.encode_texts(texts), atol=1e-5)

    report = prompttune.train("coop", oc, fashion, shots=2, out=tmp_path / "coop", eval_limit=2, progress=False,
                              steps=2, batch_size=4)
    assert report.meta["backbone"]["id"] == source
    converted = list((tmp_path / "cache" / "open_clip").iterdir())
    assert len(converted) == 1
    stamp = (converted[0] / "config.json").stat().st_mtime_ns
    again = prompttune.load(tmp_path / "coop")  # reloads the recorded open_clip source from the conversion cache
    assert again.backbone.model_id == source and (converted[0] / "config.json").stat().st_mtime_ns == stamp
    assert torch.allclose(again.probabilities(list(images)), prompttune.load(tmp_path / "coop", oc).probabilities(
        list(images)), atol=1e-6)

    bad = tmp_path / "layerscale"
    bad.mkdir()
    save_file({**state, "visual.transformer.resblocks.0.ls_1.gamma": torch.ones(32)},
              str(bad / "open_clip_model.safetensors"))
    with pytest.raises(ModelError, match=r"unsupported parameters: visual\.transformer\.resblocks\.0\.ls_1\.gamma"):
        load_clip_backbone(f"open_clip:{bad}")
    (bad / "open_clip_model.safetensors").unlink()
    shutil.copy(repo / "open_clip_model.safetensors", bad)
    (bad / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"vision_cfg": {"global_average_pool": True}}}))
    with pytest.raises(ModelError, match="open_clip options CLIPModel does not have: vision_cfg.global_average_pool"):
        load_clip_backbone(f"open_clip:{bad}")
    with pytest.raises(ModelError, match="is an open_clip CLIP model; it takes the CLIP methods"):
        load_backbone(source)
    with pytest.raises(ModelError, match="neither a local checkpoint"):
        load_clip_backbone("open_clip:nothing-here")

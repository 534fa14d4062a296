"""open_clip checkpoints as HF `CLIPModel`s, so the CLIP methods run on them through the same `ClipBackbone`.

open_clip's ViT CLIPs (OpenAI's weights and LAION's, DataComp's...) have the same architecture as HF's
`CLIPModel` and differ only in parameter names and layout, so a checkpoint is converted once (names
mapped, fused q/k/v split, projections transposed) into a cached transformers directory. This needs
neither `open_clip_torch` nor torchvision. `--model` takes:

- `open_clip:hf-hub:ORG/REPO`: an open_clip repository on the Hugging Face Hub (open_clip's own syntax);
- `open_clip:ARCH/TAG` (e.g. `open_clip:ViT-B-32/laion2b_s34b_b79k`): open_clip's pretrained table names
  the Hub repository (needs the `open_clip_torch` package only for that table);
- `open_clip:DIR`: a directory with `open_clip_model.safetensors` (or `open_clip_pytorch_model.bin`,
  read with `weights_only=True`), optionally `open_clip_config.json` and tokenizer files, as the Hub
  repositories lay them out; `open_clip:FILE`: a bare checkpoint (sizes read off the tensors, GELU).

Towers other than open_clip's own ViT and text transformer (timm, ConvNeXt, HF text towers,
attention pooling, LayerScale) are refused with the parameter names that do not fit.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from ..utils.env import cache_dir
from ..utils.io import atomic_replace_dir

PREFIX = "open_clip:"
OPENAI_TOKENIZER = "openai/clip-vit-base-patch32"  # the BPE every OpenAI-vocabulary open_clip model uses
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")
HEAD_WIDTH = 64  # open_clip's default width per attention head in both towers

_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_TOP = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias"}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def is_open_clip_source(source: str) -> bool:
    return source.startswith(PREFIX)


def open_clip_to_hf(source: str) -> Path:
    """The cached transformers directory for an `open_clip:...` model (converted on first use)."""
    found = _checkpoint_folder(source[len(PREFIX):], source)
    if found.is_file():  # a bare checkpoint: sizes from its tensors, no config, no tokenizer beside it
        weights, folder, config = found, None, {}
    else:
        weights = next((found / f for f in WEIGHT_FILES if (found / f).exists()), None)
        if weights is None:
            raise ModelError(f"model '{source}': {found} holds none of {', '.join(WEIGHT_FILES)}")
        folder, config_file = found, found / "open_clip_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.exists() else {}
    with open(weights, "rb") as f:  # streamed: checkpoints run to gigabytes
        h = hashlib.file_digest(f, "sha256")
    h.update(json.dumps(config, sort_keys=True).encode())
    digest = h.hexdigest()[:20]
    target = cache_dir() / "open_clip" / digest
    if (target / "config.json").exists():
        return target
    state = _read_state_dict(weights, source)
    hf_config, hf_state = convert_state_dict(state, config, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        _write_hf_dir(tmp, hf_config, hf_state, config, folder, source)
        atomic_replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _checkpoint_folder(spec: str, source: str) -> Path:
    """A local directory or file for the part after `open_clip:` (downloading from the Hub if it names a repo)."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if spec.startswith("hf-hub:"):
        return _download(spec[len("hf-hub:"):], source)
    if "/" in spec and not spec.startswith((".", "/", "~")):
        arch, _, tag = spec.partition("/")
        try:
            import open_clip
        except ImportError:
            raise ModelError(f"model '{source}': finding the weights of {arch}/{tag} needs open_clip's pretrained "
                             "table (pip install open_clip_torch); or name the repository, open_clip:hf-hub:ORG/REPO, "
                             "or a local checkpoint, open_clip:PATH") from None
        cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
        if not cfg.get("hf_hub"):
            raise ModelError(f"model '{source}': open_clip knows no Hub repository for {arch}/{tag}; download the "
                             "checkpoint and pass open_clip:PATH")
        return _download(cfg["hf_hub"].strip("/"), source)
    raise ModelError(f"model '{source}': {spec} is neither a local checkpoint nor hf-hub:ORG/REPO nor ARCH/TAG")


def _download(repo: str, source: str) -> Path:
    from huggingface_hub import list_repo_files, snapshot_download

    try:
        files = set(list_repo_files(repo))
        weights = next((f for f in WEIGHT_FILES if f in files), None)
        if weights is None:
            raise ModelError(f"model '{source}': Hub repository {repo} has none of {', '.join(WEIGHT_FILES)}")
        return Path(snapshot_download(repo, allow_patterns=[weights, "open_clip_config.json", *TOKENIZER_FILES]))
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, no access: one clear line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"model '{source}': cannot download {repo} from the Hub ({first})") from None


def _read_state_dict(weights: Path, source: str) -> dict[str, torch.Tensor]:
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        try:  # weights_only: tensors and plain containers only, never arbitrary pickled objects
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"model '{source}': {weights} is not a plain tensor checkpoint ({exc})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ModelError(f"model '{source}': {weights} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}


def convert_state_dict(state: dict[str, torch.Tensor], config: dict[str, Any], source: str = "open_clip"
                       ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """open_clip names and layout -> (CLIPConfig kwargs, CLIPModel state dict)."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key == "attn_mask" or key.endswith(".attn_mask"):
            continue  # the causal mask buffer of older checkpoints; CLIPModel builds its own
        if key in _TOP:
            out[_TOP[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.T.contiguous()
        elif m := _BLOCK.match(key):
            tower = "vision_model" if m.group(1) else "text_model"
            layer = f"{tower}.encoder.layers.{m.group(2)}"
            rest = m.group(3)
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]  # weight | bias: fused q, k, v in that order
                for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                    out[f"{layer}.self_attn.{name}_proj.{kind}"] = part.contiguous()
            else:
                module, _, param = rest.rpartition(".")
                if module not in _LAYER:
                    unknown.append(key)
                    continue
                out[f"{layer}.{_LAYER[module]}.{param}"] = value
        else:
            unknown.append(key)
    needed = ["token_embedding.weight", "visual.conv1.weight", "visual.positional_embedding", "text_projection",
              "visual.proj"]
    if unknown or any(k not in state for k in needed):
        missing = [k for k in needed if k not in state]
        raise ModelError(f"model '{source}': not an open_clip ViT CLIP that maps onto CLIPModel (unsupported "
                         f"parameters: {', '.join(unknown[:6]) or '-'}{' ...' if len(unknown) > 6 else ''}; missing: "
                         f"{', '.join(missing) or '-'})")
    cfg = config.get("model_cfg", {})
    vcfg, tcfg = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    different = {f"vision_cfg.{k}": vcfg[k] for k in ("global_average_pool", "attentional_pool", "no_ln_pre")
                 if vcfg.get(k)}
    different |= {"vision_cfg.pool_type": vcfg["pool_type"]} if vcfg.get("pool_type", "tok") != "tok" else {}
    different |= {"text_cfg.pool_type": tcfg["pool_type"]} if tcfg.get("pool_type", "argmax") != "argmax" else {}
    different |= {"text_cfg.no_causal_mask": True} if tcfg.get("no_causal_mask") else {}
    if different:  # same parameters, other forward pass: CLIPModel would compute something else
        raise ModelError(f"model '{source}': open_clip options CLIPModel does not have: "
                         + ", ".join(f"{k}={v}" for k, v in different.items()))
    act = "quick_gelu" if cfg.get("quick_gelu") else "gelu"
    conv = state["visual.conv1.weight"]
    v_width, patch = conv.shape[0], conv.shape[-1]
    grid = int(round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    t_width = state["token_embedding.weight"].shape[1]

    def depth(prefix: str) -> int:
        return 1 + max(int(m.group(2)) for k in state if (m := _BLOCK.match(k)) and bool(m.group(1)) == bool(prefix))

    def mlp(prefix: str) -> int:
        return state[f"{prefix}transformer.resblocks.0.mlp.c_fc.weight"].shape[0]

    text = dict(vocab_size=state["token_embedding.weight"].shape[0], hidden_size=t_width,
                intermediate_size=mlp(""), num_hidden_layers=depth(""),
                num_attention_heads=int(tcfg.get("heads", max(1, t_width // HEAD_WIDTH))),
                max_position_embeddings=state["positional_embedding"].shape[0], hidden_act=act)
    vision = dict(hidden_size=v_width, intermediate_size=mlp("visual."), num_hidden_layers=depth("visual."),
                  num_attention_heads=max(1, v_width // int(vcfg.get("head_width", HEAD_WIDTH))),
                  image_size=grid * patch, patch_size=patch, num_channels=conv.shape[1], hidden_act=act)
    return {"text_config": text, "vision_config": vision,
            "projection_dim": state["text_projection"].shape[1]}, out


def _write_hf_dir(tmp: Path, hf_config: dict[str, Any], hf_state: dict[str, torch.Tensor], oc_config: dict[str, Any],
                  folder: Path | None, source: str) -> None:
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    if folder is not None and any((folder / f).exists() for f in TOKENIZER_FILES):
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(OPENAI_TOKENIZER)
        except OSError as exc:
            raise ModelError(f"model '{source}': no tokenizer files beside the checkpoint, and OpenAI's CLIP "
                             f"tokenizer ({OPENAI_TOKENIZER}) cannot be loaded ({str(exc).splitlines()[0]})") from None
    text = {**hf_config["text_config"], "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0}
    config = CLIPConfig(text_config=text, vision_config=hf_config["vision_config"],
                        projection_dim=hf_config["projection_dim"])
    model = CLIPModel(config)
    missing, unexpected = model.load_state_dict(hf_state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]  # buffers CLIPModel builds itself
    if missing or unexpected:
        raise ModelError(f"model '{source}': converted weights do not fit CLIPModel (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    pre = oc_config.get("preprocess_cfg", {})
    (tmp / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": pre.get("mean", [0.48145466, 0.4578275, 0.40821073]),
        "image_std": pre.get("std", [0.26862954, 0.26130258, 0.27577711])}))
    (tmp / "open_clip_source.json").write_text(json.dumps({"source": source}))

"""HF PEFT interop for soft prompts (the `peft` extra).

A prompttune soft prompt, including the folded prompt of residual, low-rank and P-tuning methods,
is exactly a PEFT prompt-tuning adapter: `export_peft` writes one through PEFT's own
`save_pretrained`, so `PeftModel.from_pretrained(base, dir)` loads it. `import_peft` turns a PEFT
prompt-tuning adapter into a prompttune artifact for a given task's template and verbalizer.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..artifact import backbone_meta, check_backbone, read_artifact, task_meta, write_artifact
from ..errors import ArtifactError, ConfigError
from ..models import load_backbone
from ..tasks import load_task
from ..utils.env import package_versions
from ..utils.io import atomic_replace_dir


def _peft():
    try:
        import peft  # noqa: PLC0415 (optional extra)
    except ImportError:
        raise ConfigError("PEFT export/import needs the peft package: pip install 'prompttune[peft]'") from None
    return peft


def export_peft(artifact: str | Path, out: str | Path, model: str | None = None) -> Path:
    """Write the artifact's prompt as a PEFT prompt-tuning adapter directory."""
    peft = _peft()
    meta, tensors = read_artifact(artifact)
    kind = meta["prompt_kind"]
    if kind != "soft":
        why = {
            "none": "it learned nothing (zero-shot)",
            "kv": "deep key/value prompts are not exported yet (only soft prompts are)",
        }.get(kind, f"prompt kind '{kind}'")
        raise ArtifactError(f"{artifact} ({meta['method']}) cannot be exported to PEFT: {why}")
    backbone = load_backbone(model or meta["backbone"]["id"], device="cpu", dtype="float32")
    check_backbone(meta, backbone, f"artifact {artifact}")
    prompt = tensors["prompt"]
    config = backbone.model.config
    peft_config = peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=prompt.shape[0], token_dim=prompt.shape[1],
        num_transformer_submodules=1, num_attention_heads=config.num_attention_heads,
        num_layers=config.num_hidden_layers, base_model_name_or_path=backbone.model.name_or_path,
    )
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(backbone.model.name_or_path, dtype=torch.float32)
    wrapped = peft.get_peft_model(base, peft_config)
    with torch.no_grad():
        wrapped.prompt_encoder["default"].embedding.weight.copy_(prompt)
    out_dir = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        wrapped.save_pretrained(tmp)
        atomic_replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def import_peft(adapter: str | Path, out: str | Path, task: str, data_dir: str | Path | None = None,
                model: str | None = None) -> Path:
    """Make a prompttune artifact from a PEFT prompt-tuning adapter, for `task`'s template and verbalizer."""
    adapter_dir = Path(adapter)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.exists():
        raise ArtifactError(f"{adapter_dir}: no adapter_config.json, so not a PEFT adapter directory")
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "PROMPT_TUNING":
        raise ArtifactError(f"{config_path}: peft_type '{config.get('peft_type')}' is not importable "
                            "(only PROMPT_TUNING adapters are)")
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not weights_path.exists():
        raise ArtifactError(f"{adapter_dir}: no adapter_model.safetensors (pickled .bin adapters are refused)")
    weights = load_file(str(weights_path))
    if "prompt_embeddings" not in weights:
        raise ArtifactError(f"{weights_path}: no 'prompt_embeddings' tensor")
    prompt = weights["prompt_embeddings"].float()
    task_obj = load_task(task, data_dir)
    backbone = load_backbone(model or config.get("base_model_name_or_path") or "", device="cpu", dtype="float32")
    if prompt.shape[1] != backbone.hidden_size:
        raise ArtifactError(f"{weights_path}: prompt width {prompt.shape[1]} does not match the model's hidden "
                            f"size {backbone.hidden_size}")
    meta = {
        "method": "prompt-tuning", "prompt_kind": "soft", "hyperparameters": {"n_tokens": prompt.shape[0]},
        "trainable_parameters": prompt.numel(),
        "backbone": backbone_meta(backbone), "task": task_meta(task_obj),
        "metrics": {}, "history": [], "info": {"imported_from": str(adapter_dir.resolve())},
        "versions": package_versions(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_artifact(Path(out), {"prompt": prompt}, meta)
    return Path(out)

"""HF PEFT interop for soft prompts (the `peft` extra).

A prompttune soft prompt, including the folded prompt of residual, low-rank and P-tuning methods,
is exactly a PEFT prompt-tuning adapter: `export_peft` writes one through PEFT's own
`save_pretrained`, so `PeftModel.from_pretrained(base, dir)` loads it. `import_peft` turns a PEFT
prompt-tuning adapter into a prompttune artifact for a given task's template and verbalizer, or, for a
generative task, its template, target, metrics and generation settings.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..artifact import backbone_meta, check_backbone, task_meta, write_artifact
from ..errors import ArtifactError, ConfigError
from ..kinds import open_artifact
from ..models import load_backbone
from ..prompts.deep import kv_shape, peft_rows_to_kv
from ..prompts.kinds import get_prompt_kind
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
    """Write the artifact's prompt as a PEFT adapter directory: a soft prompt (prompt tuning and every
    method whose folded result is a plain prompt: residual, LoPT, P-tuning, XPrompt, transfer, ...)
    as PROMPT_TUNING, a deep key/value prompt (prefix-tuning, P-tuning v2) as PREFIX_TUNING."""
    peft = _peft()
    _, meta, tensors = open_artifact(artifact)
    kind = get_prompt_kind(meta["prompt_kind"])
    exported = kind.peft_rows(tensors)
    if exported is None:
        why = kind.no_peft or f"prompt kind '{kind.name}'"
        raise ArtifactError(f"{artifact} ({meta['method']}) cannot be exported to PEFT: {why}")
    backbone = load_backbone(model or meta["backbone"]["id"], device="cpu", dtype="float32")
    check_backbone(meta, backbone, f"artifact {artifact}")
    config = backbone.model.config
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(backbone.model.name_or_path, dtype=torch.float32)
    weight = exported.rows
    if exported.peft_type == "PROMPT_TUNING":
        peft_config = peft.PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=weight.shape[0], token_dim=weight.shape[1],
            num_transformer_submodules=1, num_attention_heads=config.num_attention_heads,
            num_layers=config.num_hidden_layers, base_model_name_or_path=backbone.model.name_or_path,
        )
    else:
        peft_config = peft.PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=weight.shape[0], prefix_projection=False,
            base_model_name_or_path=backbone.model.name_or_path,
        )
    wrapped = peft.get_peft_model(base, peft_config)
    table = wrapped.prompt_encoder["default"].embedding.weight
    if table.shape != weight.shape:
        raise ArtifactError(f"{artifact}: PEFT expects a prompt table of shape {tuple(table.shape)} for this model, "
                            f"the artifact gives {tuple(weight.shape)}")
    with torch.no_grad():
        table.copy_(weight)
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
    """Make a prompttune artifact from a PEFT prompt-tuning adapter, for `task`'s template and verbalizer
    (a generative task: its template, target, metrics and generation settings)."""
    adapter_dir = Path(adapter)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.exists():
        raise ArtifactError(f"{adapter_dir}: no adapter_config.json, so not a PEFT adapter directory")
    config = json.loads(config_path.read_text())
    peft_type = config.get("peft_type")
    if peft_type not in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"):
        raise ArtifactError(f"{config_path}: peft_type '{peft_type}' is not importable "
                            "(PROMPT_TUNING, P_TUNING and PREFIX_TUNING adapters are)")
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not weights_path.exists():
        raise ArtifactError(f"{adapter_dir}: no adapter_model.safetensors (pickled .bin adapters are refused)")
    weights = load_file(str(weights_path))
    if "prompt_embeddings" not in weights:
        raise ArtifactError(f"{weights_path}: no 'prompt_embeddings' tensor")
    rows = weights["prompt_embeddings"].float()
    task_obj = load_task(task, data_dir)
    backbone = load_backbone(model or config.get("base_model_name_or_path") or "", device="cpu", dtype="float32")
    if peft_type == "PREFIX_TUNING":
        layers, kv_heads, head_dim = kv_shape(backbone.model.config)
        if rows.shape[1] != layers * 2 * kv_heads * head_dim:
            raise ArtifactError(f"{weights_path}: prefix width {rows.shape[1]} does not fit the model "
                                f"({layers} layers x 2 x {kv_heads} kv heads x {head_dim}); was it saved with "
                                "prefix_projection and without its folded prefix?")
        keys, values = peft_rows_to_kv(rows, layers, kv_heads)
        method, kind, tensors = "prefix-tuning", "kv", {"keys": keys, "values": values}
    else:
        if rows.shape[1] != backbone.hidden_size:
            raise ArtifactError(f"{weights_path}: prompt width {rows.shape[1]} does not match the model's hidden "
                                f"size {backbone.hidden_size}")
        # PEFT saves a P-tuning adapter's encoder *output*, so both kinds are plain soft prompts here.
        method, kind, tensors = "prompt-tuning", "soft", {"prompt": rows}
    meta = {
        "kind": "generation" if task_obj.is_generative else "text", "method": method, "prompt_kind": kind,
        "hyperparameters": {"n_tokens": rows.shape[0]}, "trainable_parameters": rows.numel(),
        "backbone": backbone_meta(backbone), "task": task_meta(task_obj),
        "metrics": {}, "primary_metric": task_obj.primary_metric, "history": [],
        "info": {"imported_from": str(adapter_dir.resolve()), "peft_type": peft_type},
        "versions": package_versions(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_artifact(Path(out), tensors, meta)
    return Path(out)

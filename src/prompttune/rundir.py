"""A run's directory and identity: what --out may hold, the run fingerprint, and --resume's check that
the directory holds the same run (method, hyper-parameters, data, seed, model)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from .artifact import ARTIFACT_JSON, RUN_JSON, foreign_entries, holds_cwd, is_run_dir
from .errors import ConfigError
from .training import CHECKPOINTS, DataParallel
from .utils.io import atomic_write_json


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, an --out that this run may not write into (or, with --overwrite, delete)."""
    if not out.exists():
        _check_writable(out)
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    _check_writable(out)
    if overwrite:
        if holds_cwd(out.resolve()):
            raise ConfigError(f"--overwrite: --out {out} is the working directory or holds it; refusing to delete "
                              "it: choose another --out")
        foreign = foreign_entries(out)
        if foreign or (any(out.iterdir()) and not is_run_dir(out)):
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ConfigError(f"--overwrite: --out {out} is not a prompttune artifact or run directory (it holds "
                              f"{shown or 'no artifact'}); refusing to delete it: choose another --out")
        return
    if (out / ARTIFACT_JSON).exists() and not resume:
        raise ConfigError(f"--out {out} already holds an artifact; pass --overwrite to replace it")
    if any(out.glob(CHECKPOINTS)) and not resume:
        raise ConfigError(
            f"--out {out} holds an unfinished run's checkpoint; pass --resume to continue it or --overwrite"
        )


def _check_writable(out: Path) -> None:
    """Create and remove a file in --out (or the nearest directory above it that exists), so a run that could
    not write its artifact fails now, not after training."""
    where = out
    while not where.exists() and where != where.parent:
        where = where.parent
    probe = where / f".prompttune-probe-{secrets.token_hex(6)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write into {where} ({exc.strerror}); choose another --out") from None


def run_fingerprint(identity: dict[str, Any]) -> str:
    """The hash of everything that determines a run's result (method, config, task, data, seeds, backbone)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def describe_differences(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """What differs between two run identities, for a message: "seed 0 -> 7; train data ... changed"."""
    if not old:
        return "it records no run identity"
    a, b = _flat(old), _flat(new)
    out: list[str] = []
    for split, info in (new.get("data") or {}).items():
        before = (old.get("data") or {}).get(split)
        if before != info:
            where = info.get("source", split) if isinstance(info, dict) else split
            size = ""
            if isinstance(before, dict) and "size" in before and "size" in info and before["size"] != info["size"]:
                size = f": {before['size']} -> {info['size']} bytes"
            out.append(f"the {split} data ({where}) changed{size}")
    for key in sorted(set(a) | set(b)):
        if key.startswith("data.") or a.get(key) == b.get(key):
            continue
        out.append(f"{key} {str(a.get(key, '(unset)'))[:40]} -> {str(b.get(key, '(unset)'))[:40]}")
    return "; ".join(out[:limit]) + ("; ..." if len(out) > limit else "") if out else "its fingerprint differs"


def check_same_run(out: Path, fingerprint: str, identity: dict[str, Any], resume: bool) -> None:
    """With --resume, continue only the run that --out holds: refuse an artifact or unfinished run of
    another one (other method, hyper-parameters, seed, shots, model or changed data), saying what differs."""
    if not resume or not out.is_dir():
        return
    unfinished = "checkpoint" if any(out.glob(CHECKPOINTS)) else "unfinished run"
    for name, what in ((ARTIFACT_JSON, "artifact"), (RUN_JSON, unfinished)):
        path = out / name
        if not path.exists():
            continue
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ConfigError(f"--resume: {path} is unreadable, so its run cannot be told; use --overwrite") from None
        if not isinstance(recorded, dict) or recorded.get("run_fingerprint") != fingerprint:
            before = recorded.get("run_identity") if isinstance(recorded, dict) else None
            why = describe_differences(before or {}, identity)
            raise ConfigError(
                f"--resume: --out {out}: its {what} belongs to a different run ({why}); "
                "--resume continues only the same run: choose another --out, or --overwrite to replace it"
            )
        return


def prepare_out_dir(out: Path, overwrite: bool, fingerprint: str, identity: dict[str, Any]) -> bool:
    """Clear --out for --overwrite (checked safe by `_check_out_dir`), create it and record the run's
    identity in run.json; returns whether the directory is new."""
    if overwrite and out.exists():
        shutil.rmtree(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if DataParallel.current().is_main:
        atomic_write_json(out / RUN_JSON, {"run_fingerprint": fingerprint, "run_identity": identity})
    return created

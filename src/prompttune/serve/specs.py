"""The names clients pass as `model`: one per served artifact (NAME=PATH, or PATH named after its directory).

Names are settled before any artifact is read, so a clash is refused at once; the engines check them
again when handed predictors directly (`load_prompts`, `load_clip_prompts`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError


def public_name(model_id: str) -> str:
    """The name clients use for the backbone: a local model's directory name, never its path on the server."""
    path = Path(model_id)
    return path.name if path.is_absolute() or path.exists() else model_id


def check_unique(names: Iterable[str], reserved: Iterable[str] = ()) -> None:
    """Refuse a name given twice, or one the server already uses (the text backbone's own name)."""
    seen = set(reserved)
    for name in names:
        if name in seen:
            raise ConfigError(f"artifact name '{name}' is used twice; name them with NAME=PATH")
        seen.add(name)


def artifact_names(specs: list[str], reserved: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(name, path) for each `NAME=PATH` or `PATH` spec."""
    pairs = []
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        pairs.append((name or Path(path).resolve().name, path))
    check_unique([name for name, _ in pairs], reserved)
    return pairs

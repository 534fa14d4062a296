"""Where prompttune keeps its caches, and the version stamp written into every artifact."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
from pathlib import Path


def cache_dir() -> Path:
    """`$PROMPTTUNE_CACHE`, else `$XDG_CACHE_HOME/prompttune`, else `~/.cache/prompttune`."""
    if os.environ.get("PROMPTTUNE_CACHE"):
        root = Path(os.environ["PROMPTTUNE_CACHE"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prompttune"
    root.mkdir(parents=True, exist_ok=True)
    return root


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("prompttune", "torch", "transformers", "safetensors"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def quiet_libraries() -> None:
    """Keep transformers' loading chatter (progress bars, notices) out of our output."""
    import logging

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)

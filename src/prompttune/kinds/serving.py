"""What every kind's `engine` does before building its engine: name the artifacts and apply each one.

serve/ cannot import kinds (kinds import serve), so the artifacts are opened here, through the kind
(`open_artifact`, `check_backbone`, `Kind.predictor`), and serve/ is handed ready predictors.
"""

from __future__ import annotations

from typing import Any

from ..artifact import check_backbone
from ..errors import ConfigError
from ..serve.specs import artifact_names
from .base import Kind, open_artifact


def served_predictors(kind: Kind, backbone: Any, specs: list[str],
                      reserved: tuple[str, ...] = ()) -> list[tuple[str, str, Any]]:
    """(name, path, predictor) for each NAME=PATH or PATH: names settled first (a clash is refused before
    anything is read), then each artifact refused when it is of another kind or was trained on other weights."""
    served = []
    for name, path in artifact_names(specs, reserved):
        other, meta, tensors = open_artifact(path)
        if other.serves_with != kind.serves_with:
            raise ConfigError(f"artifact {path} is a {other.name} artifact; this server runs the {kind.name} model "
                              f"{backbone.model_id}: one server serves one kind, start one for each")
        check_backbone(meta, backbone, f"artifact {path}")
        served.append((name, path, other.predictor(backbone, meta, tensors, f"artifact {path}")))  # its own kind's
    return served

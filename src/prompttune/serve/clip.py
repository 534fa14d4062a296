"""Serving CLIP artifacts: `prompttune serve` over a CLIP-style backbone classifies images.

`POST /v1/classify` takes `{"model": NAME, "input": [IMAGE, ...]}` where each IMAGE is base64 bytes of
an image file (PNG, JPEG, ...), a `data:image/...;base64,` URL, or `{"image": <either>}`; the answer
names a label and gives a probability per class for each image, as the text classifier does. The
classes are all of the artifact's task (base and new), or the trained ones for a class-specific context.

One worker thread runs the requests in arrival order; requests for the same artifact that are waiting
together go through the towers as one batch. Class text features of contexts that do not depend on
the image are computed once per artifact (`ClipPredictor.probabilities`).
"""

from __future__ import annotations

import base64
import binascii
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..artifact import read_artifact
from ..errors import ArtifactError, ConfigError, DataError
from ..methods.clip_base import ClipPredictor
from ..models.clip import ClipBackbone
from ..tasks.images import decode_image


@dataclass
class ServedClip:
    """A name clients use as `model`: one CLIP artifact."""

    name: str
    predictor: ClipPredictor
    path: str

    @property
    def labels(self) -> list[str]:
        return [self.predictor.task.classes[c] for c in self.predictor.all_classes()]

    def describe(self) -> dict[str, Any]:
        return {"kind": "clip", "task": self.predictor.meta["task"]["name"], "labels": self.labels,
                "method": self.predictor.meta.get("method"), "path": self.path}


def load_clip_prompts(backbone: ClipBackbone, specs: list[str]) -> dict[str, ServedClip]:
    """`name=path` or `path` for each CLIP artifact, each checked against the backbone's weights."""
    from ..vlm import load_clip

    served: dict[str, ServedClip] = {}
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        name = name or Path(path).resolve().name
        if name in served:
            raise ConfigError(f"artifact name '{name}' is used twice; name them with NAME=PATH")
        if read_artifact(path)[0]["prompt_kind"] != "clip":
            raise ArtifactError(f"{path}: a text-model artifact; this server runs the CLIP model {backbone.model_id}")
        served[name] = ServedClip(name, load_clip(path, backbone), str(path))
    return served


def decode_request_image(item: Any, where: str) -> torch.Tensor:
    """One request input (base64, a data URL, or {"image": ...}) as uint8 RGB (H, W, 3)."""
    if isinstance(item, dict):
        if set(item) != {"image"}:
            raise DataError(f"{where}: an object input must have exactly one field, 'image' (got {sorted(item)})")
        item = item["image"]
    if not isinstance(item, str) or not item:
        raise DataError(f"{where}: expected base64 image bytes or a data:image/...;base64, URL")
    if item.startswith("data:"):
        head, sep, item = item.partition(",")
        if not sep or not head.endswith(";base64"):
            raise DataError(f"{where}: a data URL must be base64-encoded (data:image/png;base64,...)")
    try:
        raw = base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DataError(f"{where}: not valid base64 ({exc})") from None
    return decode_image(raw, where)


@dataclass
class _Job:
    name: str
    images: list[torch.Tensor]
    future: Future = field(default_factory=Future)


class ClipEngine:
    """One CLIP backbone and its artifacts; one worker thread, which batches waiting jobs per artifact."""

    kind = "clip"

    def __init__(self, backbone: ClipBackbone, prompts: dict[str, ServedClip], max_batch: int = 64):
        self.backbone = backbone
        self.prompts = prompts
        self.max_batch = max_batch
        self.stats = {"batches": 0, "rows": 0, "forward_passes": 0}
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._loop, name="prompttune-clip-engine", daemon=True)
        self._worker.start()

    def get(self, name: str) -> ServedClip:
        if name not in self.prompts:
            raise KeyError(name)
        return self.prompts[name]

    def classify(self, name: str, images: list[torch.Tensor]) -> Future:
        """Future of [(label, {label: probability})] per image."""
        job = _Job(self.get(name).name, images)
        self.queue.put(job)
        return job.future

    def close(self) -> None:
        self.queue.put(None)
        self._worker.join(timeout=10)

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            jobs = [job]
            while len(jobs) < self.max_batch:  # whatever else is already waiting joins this round
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self.queue.put(None)
                    break
                jobs.append(more)
            self.stats["batches"] += 1
            for name in dict.fromkeys(j.name for j in jobs):
                group = [j for j in jobs if j.name == name]
                self._run(name, group)

    def _run(self, name: str, jobs: list[_Job]) -> None:
        served = self.prompts[name]
        images = [im for j in jobs for im in j.images]
        try:
            probs = served.predictor.probabilities(images).tolist()
        except Exception as exc:  # noqa: BLE001 - handed to the waiting request, which answers with it
            for j in jobs:
                j.future.set_exception(exc)
            return
        self.stats["rows"] += len(images)
        self.stats["forward_passes"] += 1
        labels, start = served.labels, 0
        for j in jobs:
            rows = probs[start:start + len(j.images)]
            start += len(j.images)
            j.future.set_result([(labels[max(range(len(r)), key=r.__getitem__)], dict(zip(labels, r, strict=True)))
                                 for r in rows])

"""Serving CLIP artifacts: `prompttune serve` over a CLIP-style backbone classifies images.

`POST /v1/classify` takes `{"model": NAME, "input": [IMAGE, ...]}` where each IMAGE is base64 bytes of
an image file (PNG, JPEG, ...), a `data:image/...;base64,` URL, or `{"image": <either>}`; the answer
names a label and gives a probability per class for each image, as the text classifier does. The
classes are all of the artifact's task (base and new), or the trained ones for a class-specific context.

One worker thread runs the requests through a `FairQueue` (serve/scheduler.py): batches of at most
`max_batch` images of one artifact, the waiting requests' images shared out in turn, artifacts served
round-robin. Class text features of contexts that do not depend on the image are computed once per
artifact (`ClipPredictor.probabilities`).

Images are checked before they are decoded: the file header gives the size, and an image over
`--max-image-pixels`, or a request whose images would decode to more than `--max-decoded-mb`, is refused
with a 400 (a 20 kB PNG can hold a 13000x13000 image). Decoding is bounded server-wide too: the
requests being decoded at once may hold at most `DecodeBudget` bytes; beyond it a request answers 503.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
import time
import warnings
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import DataError
from ..methods.family.clip import ClipPredictor
from ..models.clip import ClipBackbone
from ..tasks.images import decode_image
from .scheduler import EngineClosed, FairQueue, Overloaded, Part, Work
from .specs import check_unique

_quiet = threading.Lock()
_quieted = False


def _quiet_pil_bomb_warning() -> None:
    """Silence PIL's decompression-bomb warning once for the process: the server compares every header's
    size with its own limit, and `warnings.catch_warnings` per call is not thread-safe."""
    global _quieted
    from PIL import Image

    with _quiet:
        if not _quieted:
            warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
            _quieted = True


class DecodeBudget:
    """The bytes all requests may be decoding at once (server-wide); a request that does not fit is
    refused (`Overloaded`, 503) before it decodes anything."""

    def __init__(self, capacity: int):
        self.capacity, self.used = capacity, 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> None:
        with self._lock:
            if self.used and self.used + size > self.capacity:
                raise Overloaded(f"the server is decoding {self.used / 2**20:,.0f} MiB of images already; retry "
                                 "shortly")
            self.used += size

    def release(self, size: int) -> None:
        with self._lock:
            self.used -= size


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
                "method": self.predictor.meta.get("method")}


def load_clip_prompts(predictors: list[tuple[str, str, ClipPredictor]]) -> dict[str, ServedClip]:
    """The served artifacts from (name, path, predictor) triples (`ClipKind.engine` builds them from
    NAME=PATH specs, each checked against the backbone's weights); names must be unique."""
    check_unique([name for name, _, _ in predictors])
    return {name: ServedClip(name, predictor, str(path)) for name, path, predictor in predictors}


def request_image_bytes(item: Any, where: str) -> bytes:
    """One request input (base64, a data URL, or {"image": ...}) as the image file's bytes."""
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
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DataError(f"{where}: not valid base64 ({exc})") from None


def image_size(raw: bytes, where: str, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the image file's header, without decoding its pixels; over `max_pixels` is refused."""
    from PIL import Image

    _quiet_pil_bomb_warning()
    try:
        with Image.open(io.BytesIO(raw)) as im:
            width, height = im.size
    except Image.DecompressionBombError as exc:  # over twice PIL's own limit: PIL refuses to open it
        raise DataError(f"{where}: the image is too large to decode ({exc}); this server takes at most "
                        f"{max_pixels:,} pixels per image (--max-image-pixels)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{where}: not a readable image ({exc})") from None
    if width * height > max_pixels:
        raise DataError(f"{where}: the image is {width}x{height} = {width * height:,} pixels; this server takes at "
                        f"most {max_pixels:,} per image (--max-image-pixels)")
    return width, height


def decode_request_images(items: list[Any], max_pixels: int = 4096 * 4096, max_decoded_bytes: int = 256 * 2**20,
                          budget: DecodeBudget | None = None) -> list[torch.Tensor]:
    """A request's images as uint8 RGB (H, W, 3), every header checked before any pixel is decoded;
    with a `budget`, its decoded bytes are reserved in it while decoding."""
    raws = [request_image_bytes(x, f"input[{i}]") for i, x in enumerate(items)]
    sizes = [image_size(raw, f"input[{i}]", max_pixels) for i, raw in enumerate(raws)]
    decoded = sum(4 * w * h for w, h in sizes)  # RGBA while transparency is composited
    if decoded > max_decoded_bytes:
        raise DataError(f"the {len(items)} images would decode to {decoded / 2**20:,.0f} MiB; this server takes "
                        f"at most {max_decoded_bytes / 2**20:,.0f} MiB per request (--max-decoded-mb)")
    if budget is not None:
        budget.reserve(decoded)
    try:
        return [decode_with_limit(raw, f"input[{i}]", max_pixels) for i, raw in enumerate(raws)]
    finally:
        if budget is not None:
            budget.release(decoded)


def decode_with_limit(raw: bytes, where: str, max_pixels: int) -> torch.Tensor:
    """`decode_image` of bytes whose header was checked; PIL's own bomb check, which a larger
    `--max-image-pixels` may exceed, answers in the same words."""
    from PIL import Image

    _quiet_pil_bomb_warning()
    try:
        return decode_image(raw, where)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{where}: the image is too large to decode ({exc}); this server takes at most "
                        f"{max_pixels:,} pixels per image (--max-image-pixels)") from None


class ClipEngine:
    """One CLIP backbone and its artifacts; one worker thread, which batches waiting images per artifact.
    The queue's capacity is in decoded bytes (`max_queued_bytes`); a full queue answers 503."""

    inputs = "images"  # what /v1/classify takes (the app picks its routes by it)

    def __init__(self, backbone: ClipBackbone, prompts: dict[str, ServedClip], max_batch: int = 64,
                 max_queued_bytes: int = 2**30):
        self.backbone = backbone
        self.prompts = prompts
        self.max_batch = max_batch
        self.stats = {"batches": 0, "rows": 0, "forward_passes": 0}
        self.queue = FairQueue(max_queued_bytes)
        self._closing = threading.Event()
        self._worker = threading.Thread(target=self._loop, name="prompttune-clip-engine", daemon=True)
        self._worker.start()

    def get(self, name: str) -> ServedClip:
        if name not in self.prompts:
            raise KeyError(name)
        return self.prompts[name]

    def classify(self, name: str, images: list[torch.Tensor], timeout: float | None = None) -> Future:
        """Future of [(label, {label: probability})] per image."""
        weight = sum(im.numel() for im in images)
        deadline = None if timeout is None else time.monotonic() + timeout
        return self.queue.submit(Work(("clip", self.get(name).name), images, deadline=deadline, weight=weight))

    def begin_close(self) -> None:
        self._closing.set()
        self.queue.close(EngineClosed("the server is shutting down"))

    def close(self, wait: float = 10.0) -> None:
        self.begin_close()
        self._worker.join(timeout=wait)

    def _loop(self) -> None:
        while not self._closing.is_set():
            if not self.queue.wait(timeout=0.5):
                continue
            batch = self.queue.take(lambda key: self.max_batch)
            if batch is not None:
                self._run(batch[0][1], batch[1])

    def _run(self, name: str, parts: list[Part]) -> None:
        served = self.prompts[name]
        images = [im for w, a, b in parts for im in w.rows[a:b]]
        self.stats["batches"] += 1
        try:
            probs = served.predictor.probabilities(images).tolist()
        except Exception as exc:  # noqa: BLE001 - handed to the waiting request, which answers with it
            for w, _, _ in parts:
                self.queue.fail(w, exc)
            return
        self.stats["rows"] += len(images)
        self.stats["forward_passes"] += 1
        labels, start = served.labels, 0
        for w, a, b in parts:
            rows = probs[start:start + b - a]
            start += b - a
            self.queue.deliver(w, a, [(labels[max(range(len(r)), key=r.__getitem__)], dict(zip(labels, r, strict=True)))
                                      for r in rows])

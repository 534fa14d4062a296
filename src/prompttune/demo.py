"""`prompttune demo` (what `make demo` runs): zero-shot against prompt tuning on the offline
`tweets-polarity` task, the prompt's nearest vocabulary tokens and a few predictions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .api import TrainReport, load, train
from .models import load_backbone
from .prompts import nearest_tokens

SAMPLES = ["I love my new phone, the camera is amazing", "worst customer service ever, never again",
           "@united thanks for the upgrade, the crew was lovely"]


@dataclass
class DemoResult:
    zero_shot: TrainReport
    tuned: TrainReport
    n_vectors: int
    nearest: list[str]  # the nearest vocabulary token of each learned prompt vector
    predictions: list[tuple[str, str]]  # (label, sample text)


def run_demo(model: str, shots: int, steps: int, eval_limit: int, out: Path, device: str,
             progress: bool) -> DemoResult:
    backbone = load_backbone(model, device=device)
    common = dict(model=backbone, task="tweets-polarity", shots=shots, seed=0, eval_limit=eval_limit, overwrite=True)
    zero = train("zero-shot", out=out.with_name(out.name + "-zero-shot"), progress=False, **common)
    tuned = train("prompt-tuning", out=out, steps=steps, eval_every=16, progress=progress, **common)
    predictor = load(out, model=backbone)
    nearest = [row[0][0] for row in nearest_tokens(backbone, predictor.prompt)]
    return DemoResult(zero, tuned, predictor.prompt.shape[0], nearest,
                      list(zip(predictor.predict(SAMPLES), SAMPLES, strict=True)))

"""Base-to-new generalisation of the CLIP prompt learners, on the LiT-style MiniLM dual encoder.

Fashion-MNIST, 16 shots of each of the 5 base classes, seeds 0-2; accuracy on held-out test images
of the base classes (among base) and of the new classes (among new), and their harmonic mean, with
each method's defaults. The seed papers' claim to check: CoOp overfits the base classes and loses
on new ones; CoCoOp, KgCoOp and PromptSRC keep new-class accuracy closer to zero-shot.

Usage: python benchmarks/clip_base_to_new.py [--seeds 0 1 2] [--shots 16] [--test-per-class 200]
Last line: clip_methods=<n> beating_zero_shot_hm=<m> coop_new_minus_zero_shot=<d>
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import prompttune
from prompttune.models.clip import load_clip_backbone
from prompttune.tasks.images import load_image_task
from prompttune.testing import lit_fashion_model

METHODS = ["zero-shot-clip", "coop", "cocoop", "kgcoop", "prograd", "maple", "promptsrc"]


def fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f}±{sd:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    args = ap.parse_args()
    task = load_image_task("fashion-mnist")
    bb = load_clip_backbone(str(lit_fashion_model()), device="cpu")
    rows: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            r = rows.setdefault(method, {"base": [], "new": [], "hm": [], "secs": [], "params": []})
            for seed in args.seeds:
                t = time.perf_counter()
                rep = prompttune.train(method, bb, task, shots=args.shots, seed=seed,
                                       out=Path(tmp) / f"{method}-{seed}", eval_limit=args.test_per_class,
                                       progress=False)
                m = rep.meta["metrics"]["eval"]
                r["base"].append(m["base"]["accuracy"])
                r["new"].append(m["new"]["accuracy"])
                r["hm"].append(m["hm"])
                r["secs"].append(time.perf_counter() - t)
                r["params"].append(rep.meta["trainable_parameters"])
                print(f"{method} seed {seed}: base {m['base']['accuracy']:.3f} new {m['new']['accuracy']:.3f} "
                      f"hm {m['hm']:.3f} ({r['secs'][-1]:.1f}s)", flush=True)
    print("\n| method | base | new | HM | trainable | s/run |\n|---|---|---|---|---|---|")
    for method, r in rows.items():
        print(f"| {method} | {fmt(r['base'])} | {fmt(r['new'])} | {fmt(r['hm'])} | {r['params'][0]:,} | "
              f"{statistics.mean(r['secs']):.1f} |")
    zs = rows.get("zero-shot-clip")
    zs_hm = statistics.mean(zs["hm"]) if zs else 0.0
    beating = sum(1 for m, r in rows.items() if m != "zero-shot-clip" and statistics.mean(r["hm"]) > zs_hm)
    coop_gap = (statistics.mean(rows["coop"]["new"]) - statistics.mean(zs["new"])) if zs and "coop" in rows else 0.0
    print(f"clip_methods={len(rows) - (1 if zs else 0)} beating_zero_shot_hm={beating} "
          f"coop_new_minus_zero_shot={coop_gap:+.3f}")


if __name__ == "__main__":
    main()

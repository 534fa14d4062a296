"""Candidate scoring throughput: the search engine vs. a naive loop, side by side in one process.

The workload of a separator search (Babel, AutoPrompt, RLPrompt): C candidate separators, each
placed between the input and the answer cue, scored on the same N SST-2 sentences.

- naive: one `model(**tokenizer(text))` call per (candidate, example), full-vocabulary logits, the
  label words read at the last position (what the papers' scripts do);
- ours: `search.engine.CandidateScorer`: each example's tokens up to the end of its input are run
  once and cached (that cost is included in our time), then every (candidate, example) row runs
  only the candidate's tokens and the answer cue against its example's cache, many rows per
  forward pass, scoring only the label words at the answer position.

Both see the same candidates and examples; the predictions are checked to agree. Rounds alternate
(naive, ours, naive, ...) so machine noise hits both alike; the naive side scores a slice of the
candidates (its rate is per candidate-example, so the ratio is fair) to keep the run short.

Last line: speedup_vs_naive=<x> candidates_per_s=<r> (r: candidate-examples scored per second, ours)

    python benchmarks/search_throughput.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from prompttune.models import load_backbone
from prompttune.prompts.hard import HardPrompt
from prompttune.search.engine import CandidateScorer
from prompttune.search.vocab import word_token_ids
from prompttune.tasks import load_task

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@torch.inference_mode()
def naive_scores(backbone, texts: list[str], word_ids: list[int]) -> torch.Tensor:
    out = []
    for text in texts:
        enc = backbone.tokenizer(text, return_tensors="pt")
        logits = backbone.model(**enc).logits[0, -1]
        out.append(logits[word_ids].float())
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--examples", type=int, default=64, help="SST-2 dev sentences")
    ap.add_argument("--candidates", type=int, default=48, help="separators scored by ours")
    ap.add_argument("--naive-candidates", type=int, default=4, help="separators scored by the naive loop")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    bb = load_backbone(args.model, device="cpu")
    task = load_task("sst2", args.data_dir)
    examples = task.split("dev")[: args.examples]
    labels = bb.label_words(task.words(), task.labels)
    rng = random.Random(0)
    vocab = word_token_ids(bb.tokenizer).tolist()
    seps = [bb.tokenizer.decode([rng.choice(vocab) for _ in range(rng.randint(1, 4))]) for _ in range(args.candidates)]
    prompts = [HardPrompt.build(task.spec.template, separator=s) for s in seps]
    word_ids = [w[0] for w in labels.flat]

    naive_s = ours_s = 0.0
    naive_n = ours_n = 0
    agree = total = 0
    for r in range(args.rounds):
        chunk = prompts[r * args.naive_candidates : (r + 1) * args.naive_candidates]
        texts = [p.template.format_map(ex.fields) for p in chunk for ex in examples]
        t = time.perf_counter()
        naive = naive_scores(bb, texts, word_ids)
        naive_s += time.perf_counter() - t
        naive_n += len(texts)

        scorer = CandidateScorer(bb, task, labels, examples)  # a fresh cache each round: its cost is counted
        t = time.perf_counter()
        ours = scorer.score(prompts)
        ours_s += time.perf_counter() - t
        ours_n += len(prompts) * len(examples)

        mine = torch.cat([ours[prompts.index(p)] for p in chunk])
        agree += int((mine.argmax(1) == naive.argmax(1)).sum())
        total += len(naive)
        print(
            f"round {r + 1}: naive {len(texts) / (naive_s / (r + 1)):.1f}/s, ours "
            f"{len(prompts) * len(examples) / (ours_s / (r + 1)):.1f}/s, max |diff| "
            f"{(mine - naive).abs().max():.2e}",
            flush=True,
        )

    naive_rate, ours_rate = naive_n / naive_s, ours_n / ours_s
    print(
        f"candidates={len(prompts)} examples={len(examples)} naive_candidate_examples_per_s={naive_rate:.1f} "
        f"prediction_agreement={agree / total:.4f}"
    )
    print(f"speedup_vs_naive={ours_rate / naive_rate:.2f} candidates_per_s={ours_rate:.1f}")


if __name__ == "__main__":
    main()

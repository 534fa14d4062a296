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

`--task` with a generative task (e.g. ii:singular_to_plural) times the likelihood fitness instead: C
instruction candidates (each before the template, so every example under one candidate shares the
instruction's tokens) on N training examples, each example's target (answer and stop token) teacher-forced:

- naive: one HF forward with `labels` per (candidate, example), the input tokens masked to -100, the loss
  times the number of target tokens (full-vocabulary logits at every position);
- ours: `search.generative.LikelihoodScorer`: per candidate the token prefix its examples share runs once
  as keys/values, the examples' own tokens and targets packed without padding behind it, the output layer
  only at the positions that predict a target token.

The summed NLLs are checked to agree (max |diff|). Last line: speedup_vs_naive=<x> pairs_per_s=<r>.

    python benchmarks/search_throughput.py --data-dir ../shared/data
    python benchmarks/search_throughput.py --task ii:singular_to_plural --threads 2
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
from prompttune.search.generative import LikelihoodScorer
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


# Instruction candidates for the generative workload: stems x endings, APE-like lengths (8-20 tokens).
STEMS = [
    "Write the plural form of the word.",
    "Turn the singular noun into its plural.",
    "Give the plural of the input noun.",
    "Change the word so that it means more than one.",
    "The output is the input word in the plural.",
    "Convert each noun from singular to plural form.",
    "Read the noun and answer with its plural.",
    "Make the given English noun plural.",
]
ENDINGS = ["", " Answer with one word.", " Use standard English spelling.", " Do not explain."]


@torch.inference_mode()
def naive_nll(backbone, texts: list[str], targets: list[list[int]]) -> torch.Tensor:
    """One plain HF forward with `labels` per text: the summed NLL of its target tokens."""
    out = []
    for text, target in zip(texts, targets, strict=True):
        inputs = backbone.tokenizer(text)["input_ids"]
        ids = torch.tensor([inputs + target])
        labels = torch.tensor([[-100] * len(inputs) + target])
        out.append(float(backbone.model(input_ids=ids, labels=labels).loss) * len(target))
    return torch.tensor(out)


def generative(args, bb, task) -> None:
    examples = task.split("train")[: args.examples or 32]
    n_cands = args.candidates or 32
    instructions = [stem + end for end in ENDINGS for stem in STEMS][:n_cands]
    if len(instructions) < n_cands:
        raise SystemExit(f"--candidates {n_cands}: at most {len(STEMS) * len(ENDINGS)} instruction candidates")
    prompts = [HardPrompt.build(task.spec.template, instruction=i) for i in instructions]
    naive_s = ours_s = 0.0
    naive_n = ours_n = 0
    diff = 0.0
    for r in range(args.rounds):
        chunk = prompts[r * args.naive_candidates : (r + 1) * args.naive_candidates]
        t = time.perf_counter()
        scorer = LikelihoodScorer(bb, task, examples)  # a fresh scorer each round: its tokenizing is counted
        ours = scorer.score(prompts)
        ours_s += time.perf_counter() - t
        ours_n += len(prompts) * len(examples)

        texts = [p.template.format_map(ex.fields) for p in chunk for ex in examples]
        t = time.perf_counter()
        naive = naive_nll(bb, texts, scorer.target_ids * len(chunk))
        naive_s += time.perf_counter() - t
        naive_n += len(texts)

        mine = torch.cat([ours[prompts.index(p)][:, 0] for p in chunk])
        diff = max(diff, float((mine - naive).abs().max()))
        print(f"round {r + 1}: naive {naive_n / naive_s:.1f}/s, ours {ours_n / ours_s:.1f}/s, max |diff| "
              f"{diff:.2e}", flush=True)
    naive_rate, ours_rate = naive_n / naive_s, ours_n / ours_s
    tokens = [len(x) for p in prompts[:1] for x in bb.tokenize(scorer.render(p.template))]
    print(f"task={task.name} candidates={len(prompts)} examples={len(examples)} threads={torch.get_num_threads()} "
          f"input_tokens_mean={sum(tokens) / len(tokens):.1f} naive_pairs_per_s={naive_rate:.1f} "
          f"max_abs_diff={diff:.2e}")
    print(f"speedup_vs_naive={ours_rate / naive_rate:.2f} pairs_per_s={ours_rate:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="sst2", help="sst2 (separators, label words) or a generative task")
    ap.add_argument("--examples", type=int, default=None, help="dev sentences (64) / generative train examples (32)")
    ap.add_argument("--candidates", type=int, default=None, help="candidates scored by ours (48 / 32)")
    ap.add_argument("--naive-candidates", type=int, default=4, help="candidates scored by the naive loop")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads or torch.get_num_threads())

    bb = load_backbone(args.model, device="cpu")
    task = load_task(args.task, args.data_dir)
    if task.is_generative:
        generative(args, bb, task)
        return
    examples = task.split("dev")[: args.examples or 64]
    labels = bb.label_words(task.words(), task.labels)
    rng = random.Random(0)
    vocab = word_token_ids(bb.tokenizer).tolist()
    seps = [bb.tokenizer.decode([rng.choice(vocab) for _ in range(rng.randint(1, 4))])
            for _ in range(args.candidates or 48)]
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

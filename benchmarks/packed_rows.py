"""How long a packed row should be: `backbone.score` at several `max_row_tokens`, side by side in one run.

`backbone.score` packs a batch's examples into rows of at most `max_row_tokens` tokens, with block-diagonal
masks. Attention and the masks then cost rows x width^2, and the masked part is wasted work. So a long
row can cost more than the padding it saves. Today evaluation and the search engine pass 512 and training
and the target NLL use the default of 1,024.

The workload is the evaluation one: held-out tweets (the `tweets` task) in batches of 32, behind a
20-token soft prompt. Training's workload is the same with batches of 8, with gradients. Row lengths are
timed in alternating rounds, so machine noise hits them all alike. Scores are checked against the
1,024-token rows (max |diff|: float rounding only).

Last line: speedup_128_vs_512=<x> speedup_128_vs_1024=<y> max_diff=<d>

    python benchmarks/packed_rows.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

ROWS = (1024, 512, 256, 128)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--examples", type=int, default=128, help="held-out tweets scored per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from prompttune.evaluation import encode
    from prompttune.models import load_backbone
    from prompttune.tasks import load_task

    backbone = load_backbone(args.model, device="cpu")
    task = load_task("tweets", args.data_dir)
    ids = encode(backbone, task, task.split("test")[: args.examples]).token_ids
    labels = backbone.label_words(task.words(), task.labels)
    prompt = torch.randn(20, backbone.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.02
    print(f"{len(ids)} tweets, {sum(map(len, ids)) / len(ids):.1f} tokens each on average, a 20-token prompt")

    def evaluate(rows: int) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([backbone.score(ids[i : i + 32], labels, prompt, max_row_tokens=rows)
                              for i in range(0, len(ids), 32)])

    def train(rows: int) -> None:
        soft = prompt.clone().requires_grad_()
        for i in range(0, len(ids), 8):
            backbone.score(ids[i : i + 8], labels, soft, max_row_tokens=rows).logsumexp(1).sum().backward()

    evaluate(ROWS[0])  # warm-up, of both passes: the first backward pays autograd's set-up
    train(ROWS[0])
    reference = evaluate(ROWS[0])
    seconds = {("eval", r): 0.0 for r in ROWS} | {("train", r): 0.0 for r in ROWS}
    max_diff = 0.0
    for _ in range(args.rounds):
        for rows in ROWS:
            start = time.perf_counter()
            scores = evaluate(rows)
            seconds[("eval", rows)] += time.perf_counter() - start
            max_diff = max(max_diff, float((scores - reference).abs().max()))
            start = time.perf_counter()
            train(rows)
            seconds[("train", rows)] += time.perf_counter() - start
    for what in ("eval", "train"):
        batch = 32 if what == "eval" else 8
        line = "  ".join(f"{rows}: {seconds[(what, rows)] / args.rounds:6.1f} s" for rows in ROWS)
        print(f"{what:5s} (batches of {batch}, s per round)  {line}")
    ev = {r: seconds[("eval", r)] for r in ROWS}
    print(f"speedup_128_vs_512={ev[512] / ev[128]:.2f} speedup_128_vs_1024={ev[1024] / ev[128]:.2f} "
          f"max_diff={max_diff:.1e}")


if __name__ == "__main__":
    main()

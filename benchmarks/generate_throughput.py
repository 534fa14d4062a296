"""Generation throughput behind a soft prompt: `backbone.generate` in batches vs. HF `generate` one input at a time.

The workload of a generative task's evaluation: N instruction-induction inputs (singular_to_plural,
rendered "Input: {input}\\nOutput:"), each continued greedily for at most `--max-new-tokens` tokens behind
the same soft prompt (the embeddings of an instruction), the answer cut at the first newline.

- one at a time: HF `model.generate(inputs_embeds=[prompt; embed(tokens)])` per input, greedy, the same
  `max_new_tokens`, the stop string applied to the decoded text afterwards (what a plain script does);
- ours: `backbone.generate(texts, prompt, stop=["\\n"], batch_size=B)`: inputs sorted by length and run B at a
  time, left padding and a KV cache, each row stopping once it has written a newline, the batch once all have.

The outputs are checked to be equal, text for text.

Last line: generate_speedup=<x> batch=<B> n=<N>   (x: one-at-a-time seconds over ours)

    python benchmarks/generate_throughput.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from prompttune.models import load_backbone

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
INSTRUCTION = "Write the plural form of the input word.\n"
STOP = "\n"


def load_inputs(data_dir: Path, n: int) -> list[str]:
    examples = json.loads((data_dir / "instruction-induction" / "singular_to_plural.execute.json").read_text())
    rows = list(examples["examples"].values())
    return [f"Input: {row['input']}\nOutput:" for row in (rows * (n // len(rows) + 1))[:n]]


@torch.inference_mode()
def one_at_a_time(bb, texts: list[str], prompt: torch.Tensor, max_new_tokens: int) -> list[str]:
    out = []
    for text in texts:
        ids = bb.tokenizer(text, return_tensors="pt")["input_ids"].to(bb.device)
        embeds = torch.cat([prompt.to(bb.device, bb.dtype)[None], bb.embed(ids)], 1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=bb.device)
        new = bb.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                do_sample=False, pad_token_id=bb.tokenizer.pad_token_id)
        text = bb.tokenizer.decode(new[0], skip_special_tokens=True)
        out.append(text.split(STOP, 1)[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("-n", "--examples", type=int, default=64, help="inputs generated for")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args()

    bb = load_backbone(args.model, device=args.device)
    texts = load_inputs(args.data_dir, args.examples)
    prompt = bb.embed(torch.tensor(bb.tokenizer(INSTRUCTION, add_special_tokens=False)["input_ids"])).detach()
    one_at_a_time(bb, texts[:2], prompt, 2)  # warm up both paths
    bb.generate(texts[:2], prompt, max_new_tokens=2, stop=[STOP])

    t = time.perf_counter()
    theirs = one_at_a_time(bb, texts, prompt, args.max_new_tokens)
    theirs_s = time.perf_counter() - t
    t = time.perf_counter()
    ours = bb.generate(texts, prompt, max_new_tokens=args.max_new_tokens, stop=[STOP], batch_size=args.batch_size)
    ours_s = time.perf_counter() - t
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    assert not differ, [(texts[i], ours[i], theirs[i]) for i in differ[:5]]

    print(f"{'method':<34} {'seconds':>8} {'inputs/s':>9}")
    print(f"{'HF generate, one at a time':<34} {theirs_s:>8.2f} {len(texts) / theirs_s:>9.1f}")
    print(f"{f'backbone.generate, batch {args.batch_size}':<34} {ours_s:>8.2f} {len(texts) / ours_s:>9.1f}")
    print(f"model={args.model} device={args.device} prompt_tokens={prompt.shape[0]} "
          f"max_new_tokens={args.max_new_tokens} outputs_equal={len(texts) - len(differ)}/{len(texts)} "
          f"sample={ours[:3]!r}")
    print(f"generate_speedup={theirs_s / ours_s:.2f} batch={args.batch_size} n={len(texts)}")


if __name__ == "__main__":
    main()

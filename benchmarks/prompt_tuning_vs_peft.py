"""Prompt tuning, ours vs. HF PEFT's PromptTuningConfig, side by side in one process.

Same frozen model (two loads of the same cached weights), same SST-2 few-shot data, template,
prompt length (20), initial prompt, batch size (8), batch order, AdamW, learning-rate schedule and
step count. Steps alternate between the two, so machine noise hits both alike. Each side trains in
its natural way: PEFT with `labels` (full-vocabulary logits and loss over the sequence, the way its
docs show); ours with the shared-prefix, packed, label-rows-only scoring of the backbone.

Last line: speedup_vs_peft=<x> ours_s_per_step=<s> peft_s_per_step=<s> ours_acc=<a> peft_acc=<a>
(accuracies on the first --eval-limit SST-2 test sentences after the last step).

    python benchmarks/prompt_tuning_vs_peft.py --data-dir ../shared/data --steps 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from prompttune.evaluation import classification_loss, encode, evaluate_encoded
from prompttune.models import load_backbone
from prompttune.prompts import SoftPrompt
from prompttune.tasks import load_task
from prompttune.training import TrainConfig, batch_indices, lr_at

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class SavedActivations:
    """Bytes of the distinct tensors autograd keeps for backward, frozen weights excluded: the
    activation memory a training step holds (the CPU stand-in for peak CUDA memory)."""

    def __init__(self, frozen: torch.nn.Module):
        self.frozen = {p.untyped_storage().data_ptr() for p in frozen.parameters()}
        self.seen: set[int] = set()
        self.bytes = 0

    def __enter__(self):
        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in self.frozen and storage.data_ptr() not in self.seen:
                self.seen.add(storage.data_ptr())
                self.bytes += storage.nbytes()
            return t

        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def peak_memory_mib(device: torch.device, fallback_bytes: int) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return fallback_bytes / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--shots", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--eval-limit", type=int, default=300)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import transformers
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(args.seed)

    ours_bb = load_backbone(args.model, device=args.device)
    device, dtype = ours_bb.device, ours_bb.dtype
    source = ours_bb.model.name_or_path
    task = load_task("sst2", args.data_dir)
    fewshot = task.few_shot(args.shots, args.seed)
    test_examples = task.split("test")[: args.eval_limit]
    labels = ours_bb.label_words(task.words(), task.labels)
    label_ids = torch.tensor([w[0][0] for w in labels.words], device=device)
    train = encode(ours_bb, task, fewshot.train)
    test = encode(ours_bb, task, test_examples)
    cfg = TrainConfig(steps=args.steps, lr=args.lr, batch_size=8)
    n_tokens, init_text = 20, "Classify the following text into one of the given categories."

    # ours
    prompt = SoftPrompt.initialise(ours_bb, n_tokens, "text", init_text)
    ours_opt = torch.optim.AdamW(prompt.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    # PEFT, starting from the very same prompt vectors
    peft_base = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="sdpa").to(device)
    peft_cfg = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n_tokens, prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text=init_text, tokenizer_name_or_path=source,
    )
    peft_model = get_peft_model(peft_base, peft_cfg)
    peft_embedding = peft_model.prompt_encoder["default"].embedding
    with torch.no_grad():
        peft_embedding.weight.copy_(prompt.weight.detach().to(peft_embedding.weight.dtype))
    peft_model.train()
    peft_params = [p for p in peft_model.parameters() if p.requires_grad]
    peft_opt = torch.optim.AdamW(peft_params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    tok = ours_bb.tokenizer
    pad_id = tok.pad_token_id

    def peft_batch(ids_list, golds):
        """Template + label word, right padded; loss only on the label token (labels=-100 elsewhere)."""
        seqs = [list(ids) + [int(label_ids[g])] for ids, g in zip(ids_list, golds.tolist(), strict=True)]
        width = max(map(len, seqs))
        input_ids = torch.full((len(seqs), width), pad_id)
        mask = torch.zeros_like(input_ids)
        targets = torch.full_like(input_ids, -100)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
            targets[i, len(s) - 1] = s[-1]
        return input_ids.to(device), mask.to(device), targets.to(device)

    def ours_step(step):
        ids, golds = train.subset(batch_indices(step, len(train), cfg.batch_size, args.seed))
        for g in ours_opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        ours_opt.zero_grad(set_to_none=True)
        with SavedActivations(ours_bb.model) as saved:
            loss = classification_loss(ours_bb, labels, ids, golds, prompt())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(prompt.parameters()), cfg.max_grad_norm)
        ours_opt.step()
        return float(loss.detach()), saved.bytes

    def peft_step(step):
        ids, golds = train.subset(batch_indices(step, len(train), cfg.batch_size, args.seed))
        input_ids, mask, targets = peft_batch(ids, golds)
        for g in peft_opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        peft_opt.zero_grad(set_to_none=True)
        with SavedActivations(peft_model) as saved:
            loss = peft_model(input_ids=input_ids, attention_mask=mask, labels=targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(peft_params, cfg.max_grad_norm)
        peft_opt.step()
        return float(loss.detach()), saved.bytes

    @torch.inference_mode()
    def peft_accuracy(data) -> float:
        correct = 0
        for i in range(0, len(data), 16):
            ids, golds = data.subset(range(i, min(i + 16, len(data))))
            width = max(map(len, ids))
            input_ids = torch.full((len(ids), width), pad_id)
            mask = torch.zeros_like(input_ids)
            for j, s in enumerate(ids):
                input_ids[j, : len(s)] = torch.tensor(s)
                mask[j, : len(s)] = 1
            logits = peft_model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            last = torch.tensor([n_tokens + len(s) - 1 for s in ids], device=device)
            scores = logits[torch.arange(len(ids), device=device), last][:, label_ids]
            correct += int((scores.argmax(1).cpu() == golds).sum())
        return correct / len(data)

    ours_acc0 = evaluate_encoded(ours_bb, labels, test, prompt().detach()).accuracy
    peft_acc0 = peft_accuracy(test)
    zero_acc = evaluate_encoded(ours_bb, labels, test, None).accuracy
    print(f"SST-2, {args.shots} shots/class, {args.steps} steps, batch 8, 20 virtual tokens, lr {cfg.lr}, "
          f"{device} {str(dtype).removeprefix('torch.')}; test slice {len(test)}")
    print(f"start: template only {zero_acc:.3f}, initial prompt ours {ours_acc0:.3f} / peft {peft_acc0:.3f}")

    ours_times, peft_times, ours_mem, peft_mem = [], [], 0, 0
    for step in range(1, cfg.steps + 1):
        order = (("ours", ours_step), ("peft", peft_step)) if step % 2 else (("peft", peft_step), ("ours", ours_step))
        for name, fn in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            loss, saved = fn(step)
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
            if name == "ours":
                ours_times.append(elapsed)
                ours_mem = max(ours_mem, peak_memory_mib(device, saved))
            else:
                peft_times.append(elapsed)
                peft_mem = max(peft_mem, peak_memory_mib(device, saved))
        if step % 16 == 0 or step == cfg.steps:
            print(f"step {step:3d}: ours {ours_times[-1]:.3f}s  peft {peft_times[-1]:.3f}s")

    # the first step of each pays one-off warm-up costs; the median of the rest is the steady state
    ours_s = statistics.median(ours_times[1:] or ours_times)
    peft_s = statistics.median(peft_times[1:] or peft_times)
    ours_acc = evaluate_encoded(ours_bb, labels, test, prompt().detach()).accuracy
    peft_acc = peft_accuracy(test)
    memory_kind = "peak CUDA memory" if device.type == "cuda" else "activation memory saved for backward"
    print(f"{'':8s} {'s/step':>8s} {memory_kind + ' (MiB)':>40s} {'test acc':>9s}")
    print(f"{'ours':8s} {ours_s:8.3f} {ours_mem:40.1f} {ours_acc:9.3f}")
    print(f"{'peft':8s} {peft_s:8.3f} {peft_mem:40.1f} {peft_acc:9.3f}")
    print(f"speedup_vs_peft={peft_s / ours_s:.2f} ours_s_per_step={ours_s:.3f} peft_s_per_step={peft_s:.3f} "
          f"ours_acc={ours_acc:.4f} peft_acc={peft_acc:.4f}")


if __name__ == "__main__":
    main()

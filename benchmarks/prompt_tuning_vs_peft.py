"""Prompt tuning, ours vs. HF PEFT's PromptTuningConfig, side by side in one process.

Same frozen model (two loads of the same cached weights), same few-shot data, template, prompt
length (20), initial prompt, batch size (8), batch order, AdamW, learning-rate schedule and step
count. Steps alternate between the two, so machine noise hits both alike. Each side trains in its
natural way: PEFT with `labels` (full-vocabulary logits and loss over the sequence, the way its docs
show); ours with the backbone's packed scoring of only the rows the loss reads.

Classification (default, SST-2): the loss is the label word's. Last line:
speedup_vs_peft=<x> ours_s_per_step=<s> peft_s_per_step=<s> ours_acc=<a> peft_acc=<a>
(accuracies on the first --eval-limit test sentences after the last step).

A generative task (`--task ii:singular_to_plural`, `mit-movies:director`, a task YAML with a target):
both train on the target text's tokens (and its stop token): ours through the generative objective
(`objectives.generation`, the per-token target NLL), PEFT with `labels` = the target tokens and -100
on the input tokens. Both are scored by greedy generation (the task's max_new_tokens, output cut at its
stop strings) with the task's metrics on the first --eval-limit test examples. Last line:
speedup=<x> ours_em=<a> peft_em=<b> ours_s_per_step=<s> peft_s_per_step=<s> metric=<primary metric>
(`_em` is the task's primary metric: exact match for most instruction-induction tasks).

    python benchmarks/prompt_tuning_vs_peft.py --data-dir ../shared/data --steps 64
    python benchmarks/prompt_tuning_vs_peft.py --task ii:singular_to_plural --steps 32 --eval-limit 100
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from prompttune.evaluation import classification_loss, encode, evaluate_encoded
from prompttune.generative import GenerationSetup, generate_answers, score_outputs
from prompttune.models import load_backbone
from prompttune.models.causal_lm import cut_at_stop
from prompttune.objectives import GenerationObjective
from prompttune.prompts import SoftPrompt
from prompttune.tasks import load_task
from prompttune.training import TrainConfig, batch_indices, lr_at

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
N_TOKENS, BATCH = 20, 8
INIT_TEXT = {False: "Classify the following text into one of the given categories.",
             True: "Read the input and write the output that answers it."}


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


class Side:
    """One contender: its trainable parameters, optimizer and frozen model (for the memory count)."""

    def __init__(self, name: str, params: list[torch.nn.Parameter], frozen: torch.nn.Module, cfg: TrainConfig):
        self.name, self.params, self.frozen, self.cfg = name, params, frozen, cfg
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.times: list[float] = []
        self.memory = 0.0

    def step(self, step: int, loss_fn: Callable[[], torch.Tensor]) -> tuple[float, int]:
        """One optimizer step of `loss_fn`'s loss at the shared schedule: (loss, activation bytes)."""
        for g in self.opt.param_groups:
            g["lr"] = lr_at(step, self.cfg)
        self.opt.zero_grad(set_to_none=True)
        with SavedActivations(self.frozen) as saved:
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.opt.step()
        return float(loss.detach()), saved.bytes

    @property
    def s_per_step(self) -> float:
        """The first step pays one-off warm-up costs; the median of the rest is the steady state."""
        return statistics.median(self.times[1:] or self.times)


def peft_prompt_model(ours_bb, prompt: SoftPrompt, init_text: str):
    """PEFT prompt tuning on a second load of the same weights, starting from the very same vectors."""
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    source = ours_bb.model.name_or_path
    base = AutoModelForCausalLM.from_pretrained(source, dtype=ours_bb.dtype, attn_implementation="sdpa")
    peft_cfg = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=prompt.weight.shape[0],
        prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=init_text, tokenizer_name_or_path=source,
    )
    model = get_peft_model(base.to(ours_bb.device), peft_cfg)
    embedding = model.prompt_encoder["default"].embedding
    with torch.no_grad():
        embedding.weight.copy_(prompt.weight.detach().to(embedding.weight.dtype))
    model.train()
    return model


def padded(seqs: list[list[int]], pad_id: int, device,
           label_from: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) of `seqs` right padded; labels are -100 except the tokens of
    row i from position label_from[i] on (PEFT adds -100 for its virtual tokens itself)."""
    width = max(map(len, seqs))
    input_ids = torch.full((len(seqs), width), pad_id)
    mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        if label_from is not None:
            labels[i, label_from[i] : len(s)] = torch.tensor(s[label_from[i]:])
    return input_ids.to(device), mask.to(device), labels.to(device)


def race(cfg: TrainConfig, sides: list[tuple[Side, Callable[[int], Callable[[], torch.Tensor]]]], device) -> None:
    """Alternate the two sides' steps (who goes first flips every step), timing each."""
    for step in range(1, cfg.steps + 1):
        for side, loss_at in sides if step % 2 else sides[::-1]:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            _, saved = side.step(step, loss_at(step))
            if device.type == "cuda":
                torch.cuda.synchronize()
            side.times.append(time.perf_counter() - t0)
            side.memory = max(side.memory, peak_memory_mib(device, saved))
        if step % 16 == 0 or step == cfg.steps:
            print("step " + f"{step:3d}: " + "  ".join(f"{s.name} {s.times[-1]:.3f}s" for s, _ in sides))


def classification(args, ours_bb, task) -> None:
    device, pad_id = ours_bb.device, ours_bb.tokenizer.pad_token_id
    fewshot = task.few_shot(args.shots, args.seed)
    labels = ours_bb.label_words(task.words(), task.labels)
    label_ids = torch.tensor([w[0][0] for w in labels.words], device=device)
    train = encode(ours_bb, task, fewshot.train)
    test = encode(ours_bb, task, task.split(task.eval_split_name)[: args.eval_limit])
    cfg = TrainConfig(steps=args.steps, lr=args.lr, batch_size=BATCH)
    prompt = SoftPrompt.initialise(ours_bb, N_TOKENS, "text", INIT_TEXT[False])
    peft_model = peft_prompt_model(ours_bb, prompt, INIT_TEXT[False])
    ours = Side("ours", list(prompt.parameters()), ours_bb.model, cfg)
    peft = Side("peft", [p for p in peft_model.parameters() if p.requires_grad], peft_model, cfg)

    def ours_loss(step):
        ids, golds = train.subset(batch_indices(step, len(train), cfg.batch_size, args.seed))
        return lambda: classification_loss(ours_bb, labels, ids, golds, prompt())

    def peft_loss(step):
        """Template + label word, right padded; loss only on the label token."""
        ids, golds = train.subset(batch_indices(step, len(train), cfg.batch_size, args.seed))
        seqs = [list(x) + [int(label_ids[g])] for x, g in zip(ids, golds.tolist(), strict=True)]
        input_ids, mask, targets = padded(seqs, pad_id, device, label_from=[len(s) - 1 for s in seqs])
        return lambda: peft_model(input_ids=input_ids, attention_mask=mask, labels=targets).loss

    @torch.inference_mode()
    def peft_accuracy(data) -> float:
        correct = 0
        for i in range(0, len(data), 16):
            ids, golds = data.subset(range(i, min(i + 16, len(data))))
            input_ids, mask, _ = padded([list(x) for x in ids], pad_id, device)
            logits = peft_model(input_ids=input_ids, attention_mask=mask).logits
            last = torch.tensor([N_TOKENS + len(s) - 1 for s in ids], device=device)
            scores = logits[torch.arange(len(ids), device=device), last][:, label_ids]
            correct += int((scores.argmax(1).cpu() == golds).sum())
        return correct / len(data)

    ours_acc0 = evaluate_encoded(ours_bb, labels, test, prompt().detach()).accuracy
    peft_acc0 = peft_accuracy(test)
    zero_acc = evaluate_encoded(ours_bb, labels, test, None).accuracy
    print(f"{task.name}, {args.shots} shots/class, {args.steps} steps, batch {BATCH}, {N_TOKENS} virtual tokens, "
          f"lr {cfg.lr}, {device} {str(ours_bb.dtype).removeprefix('torch.')}; test slice {len(test)}")
    print(f"start: template only {zero_acc:.3f}, initial prompt ours {ours_acc0:.3f} / peft {peft_acc0:.3f}")
    race(cfg, [(ours, ours_loss), (peft, peft_loss)], device)
    ours_acc = evaluate_encoded(ours_bb, labels, test, prompt().detach()).accuracy
    peft_acc = peft_accuracy(test)
    _table(device, [("ours", ours, ours_acc), ("peft", peft, peft_acc)], "test acc")
    print(f"speedup_vs_peft={peft.s_per_step / ours.s_per_step:.2f} ours_s_per_step={ours.s_per_step:.3f} "
          f"peft_s_per_step={peft.s_per_step:.3f} ours_acc={ours_acc:.4f} peft_acc={peft_acc:.4f}")


def _table(device, rows: list[tuple[str, Side, float]], score_name: str) -> None:
    memory_kind = "peak CUDA memory" if device.type == "cuda" else "activation memory saved for backward"
    print(f"{'':8s} {'s/step':>8s} {memory_kind + ' (MiB)':>40s} {score_name:>12s}")
    for name, side, score in rows:
        print(f"{name:8s} {side.s_per_step:8.3f} {side.memory:40.1f} {score:12.3f}")


@torch.inference_mode()
def peft_generate(peft_model, ours_bb, setup: GenerationSetup, ids: list[list[int]]) -> list[str]:
    """PEFT's greedy generation, one input at a time, decoded and cut at the stop strings.

    One at a time because PEFT drops the position ids HF derives from a left-padded batch's mask, and
    without the KV cache because PEFT's cached decoding behind a prompt-tuning adapter goes wrong after
    the first new token (huggingface/peft#1391; so with peft 0.21.2 and transformers 5.24). Both only
    slow the scoring, which is not timed."""
    tok = ours_bb.tokenizer
    out = []
    peft_model.eval()
    for x in ids:
        input_ids = torch.tensor([list(x)], device=ours_bb.device)
        tokens = peft_model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                     max_new_tokens=setup.max_new_tokens, do_sample=False, use_cache=False,
                                     pad_token_id=tok.pad_token_id, stop_strings=setup.stop or None, tokenizer=tok)
        new = tokens[0, input_ids.shape[1]:]  # PEFT returns the input, then the new tokens
        out.append(cut_at_stop(tok.decode(new, skip_special_tokens=True), setup.stop))
    peft_model.train()
    return out


def generation(args, ours_bb, task) -> None:
    device, pad_id = ours_bb.device, ours_bb.tokenizer.pad_token_id
    objective = GenerationObjective(ours_bb, task)
    setup = objective.setup
    fewshot = task.few_shot(args.shots, args.seed)
    test_examples = task.split(task.eval_split_name)[: args.eval_limit]
    train = objective.encode(fewshot.train)
    test = objective.encode(test_examples)
    cfg = TrainConfig(steps=args.steps, lr=args.lr, batch_size=BATCH)
    prompt = SoftPrompt.initialise(ours_bb, N_TOKENS, "text", INIT_TEXT[True])
    peft_model = peft_prompt_model(ours_bb, prompt, INIT_TEXT[True])
    ours = Side("ours", list(prompt.parameters()), ours_bb.model, cfg)
    peft = Side("peft", [p for p in peft_model.parameters() if p.requires_grad], peft_model, cfg)

    def ours_loss(step):
        idx = batch_indices(step, len(train), cfg.batch_size, args.seed)
        return lambda: objective.loss(train, idx, prompt())

    def peft_loss(step):
        """Input + target tokens, right padded; `labels` are the target tokens, -100 on the input."""
        ids, targets = train.subset(batch_indices(step, len(train), cfg.batch_size, args.seed))
        seqs = [list(x) + list(t) for x, t in zip(ids, targets, strict=True)]
        input_ids, mask, labels = padded(seqs, pad_id, device, label_from=[len(x) for x in ids])
        return lambda: peft_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss

    def scores() -> tuple[dict[str, float], dict[str, float]]:
        ours_out = generate_answers(ours_bb, setup, test.items, prompt().detach())
        peft_out = peft_generate(peft_model, ours_bb, setup, test.token_ids)
        return score_outputs(setup, ours_out, test.answers), score_outputs(setup, peft_out, test.answers)

    primary = setup.primary
    zero = score_outputs(setup, generate_answers(ours_bb, setup, test.items, None), test.answers)[primary]
    ours0, peft0 = scores()
    print(f"{task.name}, {args.shots} shots, {args.steps} steps, batch {BATCH}, {N_TOKENS} virtual tokens, "
          f"lr {cfg.lr}, {device} {str(ours_bb.dtype).removeprefix('torch.')}; test slice {len(test)}, greedy "
          f"up to {setup.max_new_tokens} tokens, stop {setup.stop}")
    print(f"start {primary}: template only {zero:.3f}, initial prompt ours {ours0[primary]:.3f} / "
          f"peft {peft0[primary]:.3f}")
    race(cfg, [(ours, ours_loss), (peft, peft_loss)], device)
    ours_scores, peft_scores = scores()
    _table(device, [("ours", ours, ours_scores[primary]), ("peft", peft, peft_scores[primary])], f"test {primary}")
    print(f"speedup={peft.s_per_step / ours.s_per_step:.2f} ours_em={ours_scores[primary]:.4f} "
          f"peft_em={peft_scores[primary]:.4f} ours_s_per_step={ours.s_per_step:.3f} "
          f"peft_s_per_step={peft.s_per_step:.3f} metric={primary}")


def main(argv: list[str] | None = None) -> Any:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA))
    ap.add_argument("--task", default="sst2", help="sst2 (or another classification task), or a generative task")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--shots", type=int, default=32, help="per class (classification), in all (generative)")
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--eval-limit", type=int, default=300)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    ours_bb = load_backbone(args.model, device=args.device)
    task = load_task(args.task, args.data_dir)
    (generation if task.is_generative else classification)(args, ours_bb, task)


if __name__ == "__main__":
    main()

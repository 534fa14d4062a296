"""The serving engine: one frozen backbone, many learned prompts, one worker thread that batches.

Requests from all clients queue up; the worker takes what is waiting (up to `max_batch` rows, after
waiting at most `batch_wait_ms` for company) and runs it together:

* classification rows whose prompt is text (hard, zero-shot) or a soft prompt, with single-token
  label words, go into ONE packed forward pass (`backbone.answer_hidden_mixed`), each example with
  its own template, its own label words and its own prompt: the distinct soft prompts' keys/values
  are computed once and each example attends only to its own;
* generation rows with the same sampling settings likewise go into one `generate` call;
* the rest (deep key/value prompts, DePT, instance-dependent prompts, boosted ensembles,
  multi-token label words) run through their artifact's own `Predictor`, batched per artifact.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..artifact import Predictor, check_backbone, read_artifact
from ..errors import ConfigError
from ..models import LabelWords
from ..models.causal_lm import _class_scores

MIXABLE_KINDS = ("none", "hard", "soft")


@dataclass
class ServedPrompt:
    """A name clients use as `model`: a learned artifact, or the bare backbone (predictor None)."""

    name: str
    predictor: Predictor | None
    path: str | None = None

    @property
    def kind(self) -> str:
        return self.predictor.meta["prompt_kind"] if self.predictor else "backbone"

    @property
    def soft(self) -> torch.Tensor | None:
        p = self.predictor.prompt if self.predictor else None
        return p if torch.is_tensor(p) else None

    @property
    def mixable_classify(self) -> bool:
        p = self.predictor
        return p is not None and self.kind in MIXABLE_KINDS and not p.label_words.needs_full_softmax

    @property
    def mixable_generate(self) -> bool:
        return self.kind in ("backbone", *MIXABLE_KINDS)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"kind": self.kind}
        if self.predictor:
            info.update(task=self.predictor.meta["task"]["name"], labels=self.predictor.labels,
                        method=self.predictor.meta.get("method"), path=self.path)
        return info


def load_prompts(backbone, specs: list[str]) -> dict[str, ServedPrompt]:
    """`name=path` or `path` (named after its directory) for each artifact; each checked against the
    backbone, so a prompt trained on other weights is refused at start-up."""
    served: dict[str, ServedPrompt] = {}
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        name = name or Path(path).resolve().name
        if name in served or name == backbone.model_id:
            raise ConfigError(f"artifact name '{name}' is used twice; name them with NAME=PATH")
        meta, tensors = read_artifact(path)
        check_backbone(meta, backbone, f"artifact {path}")
        served[name] = ServedPrompt(name, Predictor(backbone, meta, tensors), str(path))
    return served


@dataclass
class _Job:
    op: str  # "classify" | "generate"
    prompt: ServedPrompt
    texts: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    future: Future = field(default_factory=Future)


class Engine:
    def __init__(self, backbone, prompts: Mapping[str, ServedPrompt], max_batch: int = 64,
                 batch_wait_ms: float = 2.0):
        self.backbone = backbone
        self.prompts = {backbone.model_id: ServedPrompt(backbone.model_id, None), **prompts}
        self.max_batch = max_batch
        self.batch_wait = batch_wait_ms / 1000
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self.stats = {"batches": 0, "rows": 0, "forward_passes": 0}
        self._gen_lock = threading.Lock()
        self._worker = threading.Thread(target=self._loop, name="prompttune-engine", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ public, thread-safe
    def get(self, name: str) -> ServedPrompt:
        if name not in self.prompts:
            raise KeyError(name)
        return self.prompts[name]

    def classify(self, name: str, texts: list[str]) -> Future:
        """Future of [(label, {label: probability})] for `texts` with prompt `name`."""
        return self._submit(_Job("classify", self.get(name), texts))

    def generate(self, name: str, texts: list[str], max_tokens: int, temperature: float = 0.0,
                 seed: int | None = None) -> Future:
        """Future of [(text, n_prompt_tokens, n_completion_tokens, finish_reason)] per input text. The texts
        are the model's input as they are: putting them through an artifact's template is the caller's."""
        return self._submit(_Job("generate", self.get(name), texts,
                                 {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}))

    def stream(self, name: str, text: str, max_tokens: int, temperature: float = 0.0) -> Iterator[str]:
        """Text pieces as they are generated (one request, outside the batcher)."""
        from transformers import TextIteratorStreamer

        served = self.get(name)
        ids, soft = self._gen_inputs(served, [text])
        if not served.mixable_generate:
            with self._gen_lock:
                out = self._predictor_generate(served, [text], max_tokens, temperature)
            yield out[0][0]
            return
        streamer = TextIteratorStreamer(self.backbone.tokenizer, skip_prompt=False, skip_special_tokens=True)

        def run() -> None:
            with self._gen_lock:
                self._hf_generate(ids, soft, max_tokens, temperature, None, streamer)

        threading.Thread(target=run, daemon=True).start()
        yield from streamer

    def close(self) -> None:
        self.queue.put(None)

    # ------------------------------------------------------------------ worker
    def _submit(self, job: _Job) -> Future:
        self.queue.put(job)
        return job.future

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            batch, rows = [job], len(job.texts)
            deadline = time.monotonic() + self.batch_wait
            while rows < self.max_batch:
                try:
                    nxt = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)
                    break
                batch.append(nxt)
                rows += len(nxt.texts)
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        self.stats["batches"] += 1
        self.stats["rows"] += sum(len(j.texts) for j in batch)
        classify = [j for j in batch if j.op == "classify"]
        generate = [j for j in batch if j.op == "generate"]
        self._guard(self._classify_mixed, [j for j in classify if j.prompt.mixable_classify])
        for j in classify:
            if not j.prompt.mixable_classify:
                self._guard(self._classify_own, [j])
        groups: dict[tuple, list[_Job]] = {}
        for j in generate:
            key = ("mixed",) if j.prompt.mixable_generate else ("own", j.prompt.name)
            key += (float(j.params["temperature"]), j.params["seed"])
            groups.setdefault(key, []).append(j)
        for jobs in groups.values():
            self._guard(self._generate_group, jobs)

    def _guard(self, fn, jobs: list[_Job]) -> None:
        if not jobs:
            return
        try:
            fn(jobs)
        except Exception as exc:  # noqa: BLE001  (delivered to the waiting requests)
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(exc)

    # ------------------------------------------------------------------ classification
    @torch.inference_mode()
    def _classify_mixed(self, jobs: list[_Job]) -> None:
        rows = [(j, j.prompt, t) for j in jobs for t in j.texts]
        for start in range(0, len(rows), self.max_batch):
            chunk = rows[start : start + self.max_batch]
            ids = self.backbone.tokenize([p.predictor.render(t) for _, p, t in chunk])
            softs: dict[str, int] = {}
            for _, p, _ in chunk:
                if p.soft is not None and p.name not in softs:
                    softs[p.name] = len(softs)
            tensors = [self.prompts[name].soft for name in softs]
            prompt_of = [softs.get(p.name, -1) for _, p, _ in chunk]
            hidden = self.backbone.answer_hidden_mixed(ids, prompt_of, tensors)
            self.stats["forward_passes"] += 1
            labels = [p.predictor.label_words for _, p, _ in chunk]
            union = sorted({w[0] for lw in labels for w in lw.flat})
            where = {tok: i for i, tok in enumerate(union)}
            logits = self.backbone._logits(hidden, torch.tensor(union, device=self.backbone.device)).cpu()
            scores = [_class_logprobs(logits[r], labels[r], where) for r in range(len(chunk))]
            self._deliver_classify(chunk, scores)

    def _classify_own(self, jobs: list[_Job]) -> None:
        for j in jobs:
            scores = j.prompt.predictor.scores(j.texts)
            self.stats["forward_passes"] += 1
            self._deliver_classify([(j, j.prompt, t) for t in j.texts], list(scores))

    @staticmethod
    def _deliver_classify(rows, scores) -> None:
        results: dict[int, list] = {}
        for (job, prompt, _), s in zip(rows, scores, strict=True):
            probs = s.float().exp()
            labels = prompt.predictor.labels
            results.setdefault(id(job), []).append(
                (labels[int(probs.argmax())], {lab: round(float(p), 6) for lab, p in zip(labels, probs, strict=True)}))
        for job, _, _ in rows:
            if not job.future.done() and len(results[id(job)]) == len(job.texts):
                job.future.set_result(results[id(job)])

    def _embed_rows(self, ids: list[list[int]], softs: list[torch.Tensor | None]):
        """Left-padded (embeds, mask): row i is its soft prompt (if any), then its tokens. Unlike
        `backbone.padded_inputs`, the rows' prompts may differ in length."""
        bb = self.backbone
        lengths = [len(x) + (s.shape[0] if s is not None else 0) for x, s in zip(ids, softs, strict=True)]
        width = max(lengths)
        embeds = torch.zeros(len(ids), width, bb.hidden_size, device=bb.device, dtype=bb.dtype)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        flat = bb.embed(torch.tensor([t for x in ids for t in x], dtype=torch.long))
        offset = 0
        for i, (x, s) in enumerate(zip(ids, softs, strict=True)):
            row = flat[offset : offset + len(x)]
            offset += len(x)
            if s is not None:
                row = torch.cat([s.to(bb.device, bb.dtype), row], 0)
            embeds[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
        return embeds, mask.to(bb.device)

    # ------------------------------------------------------------------ generation
    def _gen_inputs(self, served: ServedPrompt, texts: list[str]):
        return self.backbone.tokenize(texts), [served.soft] * len(texts)

    def _generate_group(self, jobs: list[_Job]) -> None:
        temperature, seed = float(jobs[0].params["temperature"]), jobs[0].params["seed"]
        if not jobs[0].prompt.mixable_generate:
            for j in jobs:
                out = self._predictor_generate(j.prompt, j.texts, j.params["max_tokens"], temperature)
                j.future.set_result(out)
            return
        ids, softs, owners = [], [], []
        for j in jobs:
            i, s = self._gen_inputs(j.prompt, j.texts)
            ids += i
            softs += s
            owners += [(j, m) for m in range(len(j.texts))]
        max_new = max(j.params["max_tokens"] for j in jobs)
        with self._gen_lock:
            tokens = self._hf_generate(ids, softs, max_new, temperature, seed)
        self.stats["forward_passes"] += 1
        eos = self.backbone.tokenizer.eos_token_id
        results: dict[int, list] = {id(j): [] for j in jobs}
        for r, (job, _) in enumerate(owners):
            row = tokens[r][: job.params["max_tokens"]]
            finish = "length"
            if eos in row:
                row, finish = row[: row.index(eos)], "stop"
            text = self.backbone.tokenizer.decode(row, skip_special_tokens=True)
            results[id(job)].append((text, len(ids[r]), len(row), finish))
        for j in jobs:
            j.future.set_result(results[id(j)])

    @torch.inference_mode()
    def _hf_generate(self, ids, softs, max_new: int, temperature: float, seed: int | None, streamer=None):
        bb = self.backbone
        embeds, mask = self._embed_rows(ids, softs)
        kwargs: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            kwargs.update(temperature=temperature, top_k=0)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            out = bb.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new,
                                    pad_token_id=bb.tokenizer.pad_token_id, streamer=streamer, **kwargs)
        return out.cpu().tolist()

    def _predictor_generate(self, served: ServedPrompt, texts, max_tokens, temperature):
        kwargs = {"do_sample": True, "temperature": temperature} if temperature > 0 else {}
        out = []
        for t in texts:
            text = served.predictor.generate(t, max_new_tokens=max_tokens, raw=True, **kwargs)
            n_prompt = len(self.backbone.tokenize([t])[0])
            out.append((text, n_prompt, len(self.backbone.tokenizer(text, add_special_tokens=False)["input_ids"]),
                        "length"))
        return out


def _class_logprobs(logits: torch.Tensor, labels: LabelWords, where: dict[int, int]) -> torch.Tensor:
    """Log-probabilities over one row's classes from its label words' logits, aggregated as
    `backbone.score` does (`_class_scores`), then log-softmax."""
    words = torch.stack([logits[where[w[0]]] for w in labels.flat])
    return torch.log_softmax(_class_scores(words[None], labels)[0], -1)

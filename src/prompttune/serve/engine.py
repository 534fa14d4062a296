"""The serving engine: one frozen backbone, many learned prompts, one worker thread that batches.

The prompts are classification artifacts, generative artifacts (their answer is text) and the bare
backbone (`ServedPrompt`, serve/served.py). Every request becomes a `Work` in a `FairQueue`
(serve/scheduler.py); the worker takes one batch at a time (at most `max_batch` rows, the waiting
requests' rows shared out in turn) and runs it:

* classification rows whose prompt is text (hard, zero-shot) or a soft prompt, with single-token
  label words, go into ONE packed forward pass (`mixed.answer_hidden_mixed`), each example with
  its own template, its own label words and its own prompt: the distinct soft prompts' keys/values
  are computed once and each example attends only to its own;
* generation rows with the same sampling settings likewise go into one `generate` call, whatever
  their artifact (classifier or generator): each row stops at its own max_tokens and stop strings
  (a generative artifact's own plus its request's) and is cut before the first stop string;
* streams run one at a time through `generate` with a streamer;
* the rest (deep key/value prompts, DePT, instance-dependent prompts, multi-token label words), streams
  included, run behind the prompt their artifact's predictor holds, one row at a time; a boosted
  ensemble only classifies, a generative artifact only generates.

A request whose rows fail (e.g. too long for the context) fails alone: its batch is retried one
request at a time. Unseeded sampling draws a fresh seed per call, so equal requests differ.

Generation never blocks classification: between two generated tokens the worker runs one waiting
classification batch (from the stopping criterion, serve/stopping.py, in the same thread, so no lock
is needed). The same criterion ends the rows of a request that was cancelled (client gone, stop string
seen) or ran out of time, and hands each request its text as soon as its own rows are finished.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import torch
from transformers import StoppingCriteriaList

from ..errors import ConfigError
from ..models import LabelWords
from ..models.causal_lm import StopStrings
from ..models.scoring import class_scores
from .mixed import answer_hidden_mixed
from .scheduler import EngineClosed, FairQueue, Part, RequestTimeout, Work
from .served import ServedPrompt, merge_stops
from .specs import check_unique, public_name
from .stopping import Interrupt, RowStopper, TextPieces, cut_at_stops

CLASSIFY_OPS = ("classify", "classify-own")
STREAM_OPS = ("stream", "stream-own")
OWN_GENERATE_ROWS = 4  # rows of a predictor-generated group per turn (each row is its own generate call)


def load_prompts(backbone, predictors: list[tuple[str, str, Any]]) -> dict[str, ServedPrompt]:
    """The served artifacts from (name, path, predictor) triples (`TextKind.engine` builds them from
    NAME=PATH specs, each checked against the backbone's weights); names must be unique."""
    check_unique([name for name, _, _ in predictors], [public_name(backbone.model_id)])
    return {name: ServedPrompt(name, predictor, str(path)) for name, path, predictor in predictors}


class Engine:
    """The backbone, its served prompts and the worker thread. Public methods are thread-safe and return
    futures; `timeout` (seconds) bounds how long a request may wait and run before it fails with
    `RequestTimeout`; a full queue raises `Overloaded` at once."""

    inputs = "text"  # what /v1/classify takes (the app picks its routes by it)

    def __init__(self, backbone, prompts: Mapping[str, ServedPrompt], max_batch: int = 64,
                 batch_wait_ms: float = 2.0, max_queued_rows: int | None = None):
        self.backbone = backbone
        self.prompts = {public_name(backbone.model_id): ServedPrompt(public_name(backbone.model_id), None),
                        **prompts}
        self.max_batch = max_batch
        self.batch_wait = batch_wait_ms / 1000
        self.queue = FairQueue(max_queued_rows or 256 * max_batch)
        self.stats = {"batches": 0, "rows": 0, "forward_passes": 0}
        self._unique = itertools.count()
        self._closing = threading.Event()
        self._between = False
        self._generate_until = 0.0  # time.monotonic() before which generation is not interrupted
        self._worker = threading.Thread(target=self._loop, name="prompttune-engine", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ public, thread-safe
    def get(self, name: str) -> ServedPrompt:
        if name == self.backbone.model_id:  # the backbone's full id (what older versions called it)
            name = public_name(self.backbone.model_id)
        if name not in self.prompts:
            raise KeyError(name)
        return self.prompts[name]

    def classify(self, name: str, texts: list, timeout: float | None = None) -> Future:
        """Future of [(label, {label: probability})] for `texts` (strings or field mappings) with prompt `name`;
        a generative artifact or the bare backbone is refused (ConfigError)."""
        served = self.get(name)
        if not served.classifies:
            raise ConfigError(served.why_not_classify())
        key = ("classify",) if served.mixable_classify else ("classify-own", name)
        return self.queue.submit(Work(key, texts, {"prompt": served}, _deadline(timeout)))

    def generate(self, name: str, texts: list[str], max_tokens: int, temperature: float = 0.0,
                 seed: int | None = None, timeout: float | None = None, stop: Sequence[str] | None = None) -> Future:
        """Future of [(text, n_prompt_tokens, n_completion_tokens, finish_reason)] per input text. The texts
        are the model's input as they are: putting them through an artifact's template is the caller's.
        Each text is cut before the first of `stop` or the artifact's own stop strings (finish_reason
        "stop"), and its row stops generating there."""
        served = self.get(name)
        if not served.generates:
            raise ConfigError(f"'{name}' is a boosted ensemble: it classifies and does not generate text")
        key = ("generate" if served.mixable_generate else "generate-own",
               "" if served.mixable_generate else name, float(temperature))
        if seed is not None:  # a seeded request batches alone, so its samples do not depend on company
            key += (next(self._unique),)
        params = {"prompt": served, "max_tokens": max_tokens, "temperature": float(temperature), "seed": seed,
                  "stop": merge_stops(served.stops, stop)}
        return self.queue.submit(Work(key, texts, params, _deadline(timeout)))

    def stream(self, name: str, text: str, max_tokens: int, on_text: Callable[[str], None],
               temperature: float = 0.0, seed: int | None = None, timeout: float | None = None,
               stop: Sequence[str] | None = None) -> Future:
        """Generate for one text, calling `on_text(piece)` (in the worker thread) as pieces are ready; the
        pieces are uncut (a stop string may show in them: the caller cuts, as the HTTP side does).
        The future ends as `generate`'s does; cancel it to stop generating (e.g. the client went away).
        `timeout` bounds the wait for the stream to start."""
        served = self.get(name)
        if not served.generates:
            raise ConfigError(f"'{name}' is a boosted ensemble: it classifies and does not generate text")
        params = {"prompt": served, "max_tokens": max_tokens, "temperature": float(temperature), "seed": seed,
                  "stop": merge_stops(served.stops, stop), "on_text": on_text}
        key = ("stream" if served.mixable_generate else "stream-own", next(self._unique))
        return self.queue.submit(Work(key, [text], params, _deadline(timeout)))

    def begin_close(self) -> None:
        """Without waiting: fail what is queued (`EngineClosed`) and stop generation at its next token."""
        self._closing.set()
        self.queue.close(EngineClosed("the server is shutting down"))

    def close(self, wait: float = 10.0) -> None:
        """`begin_close`, then wait up to `wait` seconds for the worker to end."""
        self.begin_close()
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout=wait)

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        while not self._closing.is_set():
            if not self.queue.wait(timeout=0.5):
                continue
            if self.batch_wait and len(self.queue) == 1:  # a lone request: let those sent with it join it
                time.sleep(self.batch_wait)
            batch = self.queue.take(lambda key: OWN_GENERATE_ROWS if key[0] == "generate-own" else self.max_batch)
            if batch is not None:
                self._run(*batch)

    def _run(self, key: tuple, parts: list[Part]) -> None:
        self.stats["batches"] += 1
        self.stats["rows"] += sum(b - a for _, a, b in parts)
        run = {"classify": self._classify_mixed, "classify-own": self._classify_own, "generate": self._generate,
               "generate-own": self._generate_own, "stream": self._generate, "stream-own": self._generate_own}[key[0]]
        if key[0] in STREAM_OPS:
            parts[0][0].deadline = None  # a stream's timeout bounds its start; then its client's idle timeout rules
        try:
            run(parts)
        except Exception as exc:  # noqa: BLE001  (delivered to the waiting requests, which answer with it)
            waiting = [p for p in parts if not p[0].future.done()]
            if len(waiting) < 2 or self._closing.is_set():
                for work, _, _ in waiting:
                    self.queue.fail(work, exc)
                return
            for part in waiting:  # one request's failure is its own: the others run again, each alone
                self._run(key, [part])

    def _between_steps(self) -> None:
        """Called between two generated tokens: run one waiting classification batch, if any, and then
        let generation run undisturbed for as long as that batch took (an even share of the time)."""
        if self._between or time.monotonic() < self._generate_until:
            return
        batch = self.queue.take(lambda key: self.max_batch, accept=lambda key: key[0] in CLASSIFY_OPS)
        if batch is not None:
            self._between, start = True, time.monotonic()
            try:
                self._run(*batch)
            finally:
                self._between = False
                self._generate_until = 2 * time.monotonic() - start

    # ------------------------------------------------------------------ classification
    @torch.inference_mode()
    def _classify_mixed(self, parts: list[Part]) -> None:
        rows = [(w, w.params["prompt"], w.rows[i]) for w, a, b in parts for i in range(a, b)]
        ids = self.backbone.tokenize([p.predictor.render(t) for _, p, t in rows])
        softs: dict[str, int] = {}
        for _, p, _ in rows:
            if p.soft is not None and p.name not in softs:
                softs[p.name] = len(softs)
        tensors = [self.prompts[name].soft for name in softs]
        prompt_of = [softs.get(p.name, -1) for _, p, _ in rows]
        hidden = answer_hidden_mixed(self.backbone, ids, prompt_of, tensors)
        self.stats["forward_passes"] += 1
        labels = [p.predictor.label_words for _, p, _ in rows]
        union = sorted({w[0] for lw in labels for w in lw.flat})
        where = {tok: i for i, tok in enumerate(union)}
        logits = self.backbone._logits(hidden, torch.tensor(union, device=self.backbone.device)).cpu()
        scores = [_class_logprobs(logits[r], labels[r], where) for r in range(len(rows))]
        at = 0
        for work, a, b in parts:
            self.queue.deliver(work, a, [_labelled(work.params["prompt"], s) for s in scores[at : at + b - a]])
            at += b - a

    def _classify_own(self, parts: list[Part]) -> None:
        for work, a, b in parts:
            scores = work.params["prompt"].predictor.scores(list(work.rows[a:b]))
            self.stats["forward_passes"] += 1
            self.queue.deliver(work, a, [_labelled(work.params["prompt"], s) for s in scores])

    # ------------------------------------------------------------------ generation
    def _generate(self, parts: list[Part]) -> None:
        """Mixable prompts (text, soft, the bare backbone): all rows in one `generate` call; a stream is
        a group of its own, with a streamer."""
        rows, ids, softs = [], [], []
        for work, a, b in parts:
            soft = work.params["prompt"].soft
            reserve = (0 if soft is None else soft.shape[0]) + work.params["max_tokens"]  # fits the context
            try:
                tokens = self.backbone.tokenize(list(work.rows[a:b]), reserve)
            except Exception as exc:  # noqa: BLE001  (this request's own fault: the others go on)
                self.queue.fail(work, exc)
                continue
            if any(not x for x in tokens) and soft is None:
                self.queue.fail(work, ConfigError("prompt: nothing to continue (the text is empty after "
                                                  "tokenization)"))
                continue
            rows += [(work, i) for i in range(a, b)]
            ids += tokens
            softs += [soft] * len(tokens)
        if not rows:
            return
        first = rows[0][0].params
        streamer = TextPieces(self.backbone.tokenizer, first["on_text"]) if "on_text" in first else None
        stopper = RowStopper(self, rows, [len(x) for x in ids], early=streamer is None)
        seed = first["seed"] if first["seed"] is None else first["seed"] + rows[0][1]  # later chunks: other draws
        self.stats["forward_passes"] += 1  # counted first: the criterion may answer before `generate` returns
        out = self._hf_generate(ids, softs, max(stopper.limits), first["temperature"], seed, stopper, streamer)
        stopper.finish(out)

    def _generate_own(self, parts: list[Part]) -> None:
        """Prompts only their predictor's backbone call can apply (deep prompts, DePT, instance prompts):
        row by row, each with the prompt the predictor holds."""
        for work, a, b in parts:
            for i in range(a, b):
                if not work.live or self._closing.is_set():
                    self._drop(work)
                    break
                if not self.backbone.tokenize([work.rows[i]])[0]:
                    self.queue.fail(work, ConfigError("prompt: nothing to continue (the text is empty after "
                                                      "tokenization)"))
                    break
                answer = self._own_row(work, i)
                self.stats["forward_passes"] += 1
                if "on_text" in work.params:
                    work.params["on_text"](answer[0])
                self.queue.deliver(work, i, [answer])
                self._between_steps()

    def _own_row(self, work: Work, i: int) -> tuple[str, int, int, str]:
        """One row through `backbone.generate` behind the artifact's prompt: (text cut at a stop string,
        prompt tokens, new tokens, finish reason)."""
        params, tokenizer = work.params, self.backbone.tokenizer
        kwargs: dict[str, Any] = {"do_sample": True, "temperature": params["temperature"]} \
            if params["temperature"] > 0 else {}
        criteria = [Interrupt(self, work)] + ([StopStrings(tokenizer, params["stop"])] if params["stop"] else [])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(params["seed"], i))
            raw = self.backbone.generate([work.rows[i]], work.params["prompt"].predictor.prompt,
                                         max_new_tokens=params["max_tokens"],
                                         stopping_criteria=StoppingCriteriaList(criteria), **kwargs)[0]
        text, cut = cut_at_stops(raw, params["stop"])
        n_prompt = len(self.backbone.tokenize([work.rows[i]])[0])
        n_out = len(tokenizer(raw, add_special_tokens=False)["input_ids"])
        return text, n_prompt, n_out, "stop" if cut or n_out < params["max_tokens"] else "length"

    def _drop(self, work: Work) -> None:
        """A request that is no longer wanted: it answers (if anyone waits) with why."""
        self.queue.fail(work, EngineClosed("the server is shutting down") if self._closing.is_set()
                        else RequestTimeout("the request ran out of time while generating"))

    @torch.inference_mode()
    def _hf_generate(self, ids, softs, max_new: int, temperature: float, seed: int | None, stopper, streamer=None):
        bb = self.backbone
        embeds, mask = self._embed_rows(ids, softs)
        kwargs: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            kwargs.update(temperature=temperature, top_k=0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(seed))
            out = bb.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new,
                                    pad_token_id=bb.tokenizer.pad_token_id, streamer=streamer,
                                    stopping_criteria=StoppingCriteriaList([stopper]), **kwargs)
        return out.cpu()

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


def _seed(seed: int | None, offset: int = 0) -> int:
    """The seed of one generate call: the request's (plus `offset`), or a fresh random one; `fork_rng`
    restores the RNG after each call, so without a fresh seed equal unseeded requests would sample alike."""
    return secrets.randbits(63) if seed is None else seed + offset


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _labelled(prompt: ServedPrompt, scores: torch.Tensor) -> tuple[str, dict[str, float]]:
    probs = scores.float().exp()
    labels = prompt.predictor.labels
    return labels[int(probs.argmax())], {lab: round(float(p), 6) for lab, p in zip(labels, probs, strict=True)}


def _class_logprobs(logits: torch.Tensor, labels: LabelWords, where: dict[int, int]) -> torch.Tensor:
    """Log-probabilities over one row's classes from its label words' logits, aggregated as
    `backbone.score` does (`class_scores`), then log-softmax."""
    words = torch.stack([logits[where[w[0]]] for w in labels.flat])
    return torch.log_softmax(class_scores(words[None], labels)[0], -1)

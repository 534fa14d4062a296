"""Black-Box Tuning (Sun et al., 2022, BBT; and BBTv2's deep variant): a soft prompt found with forward
passes only.

CMA-ES (the `cma` package) searches a low-dimensional vector z; a fixed random matrix A maps it into
the prompt space, prompt = p0 + A z. A is Gaussian with standard deviation
std(embeddings) / (sqrt(d) * sigma), as in the reference code, so a CMA-ES step of size sigma moves the
prompt on the scale of real embeddings. The fitness is the cross-entropy on the k-shot train set
(what BBT minimises); the best few vectors are re-scored on dev and the best there is kept.

`variant=bbtv2`: deep prompts. Each layer's keys/values (initialised from the model's own for p0)
get their own z_l and random matrix, and CMA-ES runs on one layer at a time, cycling over the layers
(BBTv2's divide-and-conquer). Every model call is one prompt on one example and is charged to
`--budget`; the result is an ordinary soft ("soft") or deep ("kv") prompt artifact.

On a generative task the loss CMA-ES minimises is the target's negative log-likelihood per token on the
train set (the task's `GenerationObjective`, one pass per example) and the finalists are picked on dev by
the task's metric on greedy generations (target NLL breaking ties). A dev evaluation is charged at its
most, one NLL pass and `max_new_tokens` generated tokens per example, and an unset `--budget` grows by
that reserve; the instruction p0 starts from is then a generic one.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..evaluation import encode
from ..objectives import objective_for
from ..prompts import SoftPrompt
from ..search.state import SearchState
from .base import Method, MethodConfig, MethodResult, RunContext, register
from .family.search import check_budget, default_instruction, resolved_budget


class BBTConfig(MethodConfig):
    budget: int = Field(4000, ge=1, description="forward passes (one prompt on one example), dev picking included")
    variant: Literal["bbt", "bbtv2"] = Field("bbt", description="bbt: input prompt; bbtv2: deep (per-layer) prompts")
    n_tokens: int = Field(10, ge=1, description="prompt length")
    intrinsic_dim: int = Field(100, ge=2, description="dimension d of the searched vector (the paper: 500)")
    popsize: int | None = Field(None, ge=2, description="CMA-ES population (default 4 + 3 ln d, as CMA-ES)")
    sigma: float = Field(1.0, gt=0, description="CMA-ES initial step size")
    init_text: str = Field(
        "Classify the following text into one of the given categories.", description="text whose embeddings are p0"
    )
    finalists: int = Field(3, ge=1, description="best vectors re-scored on dev to pick the result")


@register
class BBT(Method):
    name = "bbt"
    description = (
        "Black-Box Tuning (BBT/BBTv2): CMA-ES in a random low-dimensional subspace of the prompt; forward passes only."
    )
    Config = BBTConfig
    generative = True

    def fit(self, ctx: RunContext) -> MethodResult:
        with warnings.catch_warnings():  # cma warns that matplotlib is missing; plotting is not used
            warnings.simplefilter("ignore")
            import cma
        cfg: BBTConfig = self.config  # type: ignore[assignment]
        bb = ctx.backbone
        popsize = cfg.popsize or int(4 + 3 * np.log(cfg.intrinsic_dim))
        n_train, n_dev = len(ctx.data.train), len(ctx.data.dev)
        generative = ctx.task.is_generative
        per_dev = 1 + ctx.task.generation.max_new_tokens if generative else 1
        reserve = (cfg.finalists + 1) * n_dev * per_dev
        budget = resolved_budget(cfg, ctx, reserve)
        first = (popsize + 1) * n_train
        unit = f" x {per_dev} passes (target NLL and generated tokens)" if generative else ""
        check_budget(self.name, budget, first + reserve,
                     f"the initial prompt and a population of {popsize} x {n_train} train examples, then "
                     f"{cfg.finalists + 1} finalists x {n_dev} dev examples{unit} to pick the result")
        if cfg.variant == "bbtv2":
            bb.check_prefix_support("bbt variant=bbtv2")
        state = SearchState(ctx.out_dir, budget - reserve, ctx.resume, ctx.run_fingerprint, ctx.callbacks)
        objective = (ctx.objective or objective_for(bb, ctx.task)) if generative else None
        if objective is not None:
            train, dev = objective.encode(ctx.data.train), objective.encode(ctx.data.dev)
        else:
            train, dev = encode(bb, ctx.task, ctx.data.train), encode(bb, ctx.task, ctx.data.dev)
        init_text = default_instruction(ctx) if generative and "init_text" not in cfg.model_fields_set \
            else cfg.init_text
        p0 = SoftPrompt.initialise(bb, cfg.n_tokens, "text", init_text, seed=ctx.seed).weight.detach().float().cpu()
        gen = torch.Generator().manual_seed(ctx.seed)
        if cfg.variant == "bbt":
            emb_std = float(bb.model.get_input_embeddings().weight.float().std())
            bases = [p0]
        else:
            with torch.no_grad():
                kv = bb.prefix_from_embeddings(p0)
            bases = [torch.stack([k.float().cpu(), v.float().cpu()]) for k, v in kv]  # per layer (2, heads, n, d)
            emb_std = None
        projections = [
            torch.randn(cfg.intrinsic_dim, base.numel(), generator=gen)
            * ((emb_std or float(base.std())) / (np.sqrt(cfg.intrinsic_dim) * cfg.sigma))
            for base in bases
        ]
        offsets = [torch.zeros_like(b) for b in bases]  # each layer's accepted update so far

        def prompt_of(layer: int, z: np.ndarray):
            parts = [b + o for b, o in zip(bases, offsets, strict=True)]
            parts[layer] = (
                bases[layer] + offsets[layer] + (torch.from_numpy(z).float() @ projections[layer]).view_as(bases[layer])
            )
            if cfg.variant == "bbt":
                return parts[0].to(bb.device)
            return [(p[0].to(bb.device), p[1].to(bb.device)) for p in parts]

        def scores_of(data, name: str, layer: int, z: np.ndarray) -> torch.Tensor | None:
            key = (
                f"{name}:{layer}:{hashlib.sha256(z.astype(np.float64).tobytes()).hexdigest()}:"
                + hashlib.sha256(b"".join(o.numpy().tobytes() for o in offsets)).hexdigest()[:16]
            )

            def compute():
                if objective is not None:  # train: [target NLL per token]; dev: [metric, target NLL per token]
                    if name == "train":
                        return torch.tensor([objective.nll(data, prompt_of(layer, z))])
                    ev = objective.evaluate(data, prompt_of(layer, z))
                    return torch.tensor([ev.accuracy, ev.loss])
                with torch.no_grad():
                    return torch.cat(
                        [
                            bb.score(data.token_ids[i : i + 32], ctx.labels, prompt_of(layer, z)).float().cpu()
                            for i in range(0, len(data), 32)
                        ]
                    )

            return state.lookup(key, len(data) * (per_dev if name == "dev" else 1), compute)

        def loss(scores: torch.Tensor, golds: torch.Tensor | None) -> float:
            return float(scores[0]) if objective is not None else float(F.cross_entropy(scores, golds))

        golds = getattr(train, "golds", None)

        zero = np.zeros(cfg.intrinsic_dim)
        start = scores_of(train, "train", 0, zero)
        best_loss = loss(start, golds)
        state.record(-best_loss, layer=0)
        pool: list[tuple[float, int, np.ndarray, list[torch.Tensor]]] = [
            (best_loss, 0, zero, [o.clone() for o in offsets])
        ]
        layers = len(bases)
        es = {
            layer: cma.CMAEvolutionStrategy(
                zero, cfg.sigma, {"popsize": popsize, "seed": ctx.seed + 1 + layer, "verbose": -9}
            )
            for layer in range(layers)
        }
        it = 0
        while not state.exhausted and state.affords(popsize * n_train):
            layer = it % layers
            solutions = es[layer].ask()
            losses = []
            for z in solutions:
                s = scores_of(train, "train", layer, np.asarray(z))
                losses.append(loss(s, golds))
                state.record(-losses[-1], layer=layer)
            es[layer].tell(solutions, losses)
            k = int(np.argmin(losses))
            if losses[k] < best_loss:
                best_loss = losses[k]
            pool.append((losses[k], layer, np.asarray(solutions[k]), [o.clone() for o in offsets]))
            if cfg.variant == "bbtv2":  # the layer's best moves into its offset before the next layer's turn
                mean = np.asarray(es[layer].result.xfavorite)
                offsets[layer] = offsets[layer] + (torch.from_numpy(mean).float() @ projections[layer]).view_as(
                    bases[layer]
                )
                es[layer] = cma.CMAEvolutionStrategy(
                    zero, es[layer].sigma, {"popsize": popsize, "verbose": -9, "seed": ctx.seed + 1 + layer + it}
                )
            it += 1
            state.round_done()
        # Pick on dev among the best few (the reserve pays for it).
        state.limit = budget
        initial = pool[0]  # p0 itself is always a finalist: the search never returns worse on dev than its start
        finalists = sorted(pool, key=lambda entry: entry[0])[: cfg.finalists]
        if not any(entry is initial for entry in finalists):
            finalists.append(initial)
        dev_results = []
        for train_loss, layer, z, offs in finalists:
            saved, offsets[:] = list(offsets), offs
            s = scores_of(dev, "dev", layer, z)
            if objective is not None:
                acc, dev_loss = float(s[0]), float(s[1])
            else:
                acc, dev_loss = float((s.argmax(1) == dev.golds).float().mean()), loss(s, dev.golds)
            dev_results.append((acc, -dev_loss, -train_loss, prompt_of(layer, z)))
            offsets[:] = saved
        state.round_done()
        acc, neg_dev_loss, neg_train_loss, prompt = max(dev_results, key=lambda r: r[:3])
        info = {
            "queries_used": state.used,
            "budget": budget,
            "popsize": popsize,
            "iterations": it,
            "best_train_loss": -neg_train_loss,
            "best_dev_accuracy": acc,
            "variant": cfg.variant,
        }
        if objective is not None:  # the dev figures are the task's metric on generations
            info.update(dev_metric=ctx.task.primary_metric, best_dev_score=acc, initial_dev_score=dev_results[
                next(i for i, entry in enumerate(finalists) if entry is initial)][0])
        trainable = cfg.intrinsic_dim * len(bases)
        if cfg.variant == "bbt":
            return MethodResult("soft", {"prompt": prompt.float().cpu().clone()}, trainable, state.trace, info)
        return MethodResult(
            "kv",
            {
                "keys": torch.stack([k for k, _ in prompt]).float().cpu().clone(),
                "values": torch.stack([v for _, v in prompt]).float().cpu().clone(),
            },
            trainable,
            state.trace,
            info,
        )

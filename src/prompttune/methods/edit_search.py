"""Edit search (GrIPS, Prasad et al., 2023): phrase-level edits of an instruction, with beam search
on the score.

The instruction is split into phrases (at punctuation, then every few words; GrIPS uses a
constituency parser). Each candidate applies one edit: delete a phrase, swap two, add back a
deleted one, or paraphrase (here: replace a word with one of its nearest neighbours in the model's
embedding space, since no paraphrase model is at hand). The beam keeps the best `beam` prompts; the
search stops at the budget, after `iterations`, or after `patience` rounds without improvement.

On a generative task the search starts from a generic instruction ("Write the output for the input.")
unless given one, paraphrases only among the model's most frequent whole words, ranks edits by the
target's likelihood and picks among the finalists on dev by the task's metric on greedy generations.
"""

from __future__ import annotations

import random

from pydantic import Field

from ..prompts.hard import HardPrompt
from ..search.text_edits import Neighbours, edit
from ..search.vocab import common_word_ids, word_token_ids
from .base import RunContext, register
from .family.search import HardPromptSearch, SearchConfig, default_instruction

EDITS = ("del", "swap", "par", "add")


class EditSearchConfig(SearchConfig):
    instruction: str | None = Field(
        None, description="starting instruction (default: built from the label words; a generative task: a generic one)"
    )
    iterations: int = Field(8, ge=1)
    n_candidates: int = Field(4, ge=1, description="edited prompts per beam entry per iteration")
    beam: int = Field(2, ge=1)
    patience: int = Field(3, ge=1, description="stop after this many iterations without improvement")


@register
class EditSearch(HardPromptSearch):
    name = "edit-search"
    description = "GrIPS: phrase-level delete/swap/paraphrase/add edits of an instruction, beam search on the score."
    Config = EditSearchConfig
    generative = True

    def first_round(self, ctx: RunContext) -> int:
        return 1 + self.config.n_candidates  # type: ignore[attr-defined]

    def search(self, ctx: RunContext) -> None:
        cfg: EditSearchConfig = self.config  # type: ignore[assignment]
        rng = random.Random(ctx.seed)
        template = ctx.task.spec.template
        tok = ctx.backbone.tokenizer
        words = common_word_ids(tok, 8000) if ctx.task.is_generative else word_token_ids(tok)
        neighbours = Neighbours(ctx.backbone, words)
        start = cfg.instruction or default_instruction(ctx)
        fits = self.evaluate([HardPrompt.build(template, instruction=start)])
        if not fits:
            return
        beam = [(fits[0], start)]
        deleted: list[str] = []
        best, stale = fits[0], 0
        for _ in range(cfg.iterations):
            texts = []
            for _, text in beam:
                for _ in range(cfg.n_candidates):
                    new, gone = edit(text, rng.choice(EDITS), rng, deleted, neighbours)
                    if gone:
                        deleted.append(gone)
                    if new and new not in texts and new not in [t for _, t in beam]:
                        texts.append(new)
            fits = self.evaluate([HardPrompt.build(template, instruction=t) for t in texts])
            beam = sorted(beam + list(zip(fits, texts, strict=False)), key=lambda ft: -ft[0])[: cfg.beam]
            self.state.round_done()
            if beam[0][0] > best:
                best, stale = beam[0][0], 0
            else:
                stale += 1
            if self.out_of_budget or stale >= cfg.patience:
                break

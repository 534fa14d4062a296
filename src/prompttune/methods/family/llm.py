"""What the LLM-driven optimisers (apo, opro, evoprompt, ape) share.

The candidates are instructions put before the task template (`HardPrompt.build(template,
instruction=...)`), scored by the frozen task model through the search engine (forward passes,
`--budget`), and written by a separate optimiser LLM (`--llm`: in-process, or any OpenAI-compatible
endpoint with `--llm-base-url`; its calls are cached, ledgered and limited by `--max-llm-calls` /
`--max-tokens`). Every candidate is recorded in the trace with its score, the operation that made
it, its parents and the LLM text (critique) behind it. When the LLM budget is spent the search
stops and picks its result from what it has.

On a generative task (the answer is text) the candidates are ranked on train by the target's
log-likelihood (`LikelihoodScorer`: cheap and smooth where a small model's exact match is mostly 0) and
picked on dev by the task's metric on greedy answers (`MetricScorer`); what the optimiser LLM reads comes
from the metric: the examples it is shown carry their target text, ProTeGi's critiques see the failures'
produced answers, OPRO's trajectory shows the metric in 0-100. With a task endpoint
(`task_llm_base_url`) every score is the metric on the endpoint's answers (`GenerativeEndpointScorer`).
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import Field

from ...llm import LLM, ChatRequest, LLMBudgetExhausted, make_llm
from ...prompts.hard import HardPrompt
from ...search.endpoint import EndpointScorer, GenerativeEndpointScorer
from ..base import MethodResult, RunContext
from .search import HardPromptSearch, SearchConfig, default_instruction

MAX_INSTRUCTION_CHARS = 300

# The Monte-Carlo resampling prompt of APE, also used by ProTeGi and EvoPrompt.
PARAPHRASE = """Generate a variation of the following instruction while keeping the semantic meaning.

Input: {prompt}

Output:"""


class LLMSearchConfig(SearchConfig):
    instruction: str | None = Field(None, description="starting instruction (default: built from the label words)")
    iterations: int = Field(3, ge=1, description="optimisation steps")
    llm: str = Field("smollm2-135m", description="optimiser LLM: a model alias/path (in-process) or, with "
                                                  "llm_base_url, the endpoint's model name")
    llm_base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    llm_api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the endpoint's key")
    max_llm_calls: int | None = Field(None, ge=1, description="stop after this many LLM calls (cached ones count)")
    max_llm_tokens: int | None = Field(None, ge=1, description="stop once this many LLM tokens are used")
    llm_cache: str | None = Field("default", description="response cache: 'default', a SQLite path, or null")
    llm_concurrency: int = Field(8, ge=1, description="LLM requests in flight at once (endpoints)")
    llm_temperature: float = Field(0.8, ge=0.0, le=2.0)
    llm_max_tokens: int = Field(96, ge=8, description="tokens per LLM answer")
    task_llm_base_url: str | None = Field(
        None, description="score prompts with a task model behind this OpenAI-compatible endpoint (its answers "
                          "matched to the label words; on a generative task, the task's metric on its answers) "
                          "instead of the local --model")
    task_llm: str | None = Field(None, description="the endpoint's task model name (with task_llm_base_url)")
    replace_p: float = Field(
        0.1, gt=0.0, le=1.0,
        description="the starting prompt is replaced only when the pick beats it on dev with p below this "
                    "(one-sided sign test on the dev examples where the two disagree); 1.0 = plain best-on-dev",
    )


class LLMPromptSearch(HardPromptSearch):
    Config = LLMSearchConfig

    def base_prompt(self, ctx: RunContext) -> HardPrompt:
        """The starting prompt: the result is never worse than it on dev."""
        return self.prompt(self.config.instruction or default_instruction(ctx))  # type: ignore[attr-defined]

    def dev_passes_per_example(self, ctx: RunContext) -> int:
        """A task endpoint costs one query per example, whatever it generates."""
        if self.config.task_llm_base_url:  # type: ignore[attr-defined]
            return 1
        return super().dev_passes_per_example(ctx)

    def prompt(self, instruction: str) -> HardPrompt:
        return HardPrompt.build(self.ctx.task.spec.template, instruction=instruction)

    def fit(self, ctx: RunContext) -> MethodResult:
        cfg: LLMSearchConfig = self.config  # type: ignore[assignment]
        self.start(ctx)
        self.llm: LLM = make_llm(
            cfg.llm, base_url=cfg.llm_base_url, api_key_env=cfg.llm_api_key_env, cache=cfg.llm_cache,
            max_calls=cfg.max_llm_calls, max_tokens=cfg.max_llm_tokens, max_concurrency=cfg.llm_concurrency,
            backbone=ctx.backbone, ledger_path=ctx.out_dir / "llm_ledger.jsonl",
        )
        if not ctx.resume:  # a resumed run appends: the interrupted run's calls stay on record
            (ctx.out_dir / "llm_ledger.jsonl").unlink(missing_ok=True)
        self.task_llm: LLM | None = None
        if cfg.task_llm_base_url:
            # Black-box task model: its own client (cache, ledger); its calls are the search's queries.
            self.task_llm = make_llm(cfg.task_llm or cfg.llm, base_url=cfg.task_llm_base_url,
                                     api_key_env=cfg.llm_api_key_env, cache=cfg.llm_cache,
                                     max_concurrency=cfg.llm_concurrency)
            self.train_scorer = self.make_scorer(ctx.data.train, "train")
            self.dev_scorer = self.make_scorer(ctx.data.dev, "dev")
        self.base = self.base_prompt(ctx)
        self.evaluate([self.base], [{"op": "start"}])
        self.calls = 0
        try:
            self.search(ctx)
        except LLMBudgetExhausted:
            pass
        result = self.finish({"llm": self.llm.summary(), "llm_calls": self.llm.ledger,
                              "start_prompt": self.base.template})
        result = self.keep_start_unless_significant(result)
        if self.task_llm is not None:  # after the dev pick, which queries the task endpoint too
            result.info["task_llm"] = self.task_llm.summary()
        return result

    def keep_start_unless_significant(self, result: MethodResult) -> MethodResult:
        """LLM-written candidates are many and dev sets few-shot small, so the best on dev is often best
        by luck. The pick replaces the starting prompt only when it wins a one-sided sign test on the dev
        examples where the two disagree: per example, right against wrong (classification) or the higher
        metric value (generative). The scores come from the memo: no new forward passes or queries."""
        cfg: LLMSearchConfig = self.config  # type: ignore[assignment]
        chosen = HardPrompt.from_meta(result.text_prompt or {})
        if chosen.template == self.base.template:
            return result
        mine, start = (self.dev_scorer.per_example(s) for s in self.dev_scorer.score([chosen, self.base]))
        wins, losses = int((mine > start).sum()), int((mine < start).sum())
        p = sign_test_p(wins, losses)
        result.info["vs_start_on_dev"] = {"wins": wins, "losses": losses, "p": round(p, 4)}
        if p >= cfg.replace_p:
            result.info["kept_start"] = True
            result.text_prompt = self.base.as_meta()
        return result

    # ------------------------------------------------------------------ helpers for subclasses
    def make_scorer(self, examples, name: str, confirm: bool = False):
        """Scores prompts on `examples`: the local model (on a generative task the target likelihood, or with
        `confirm` the metric on greedy answers), or the task endpoint (label words, or the metric on its
        answers: an endpoint gives no likelihood)."""
        if self.task_llm is not None:
            cls = GenerativeEndpointScorer if self.ctx.task.is_generative else EndpointScorer
            return cls(self.task_llm, self.ctx.task, examples, self.state, name)
        return self.scorer(examples, name, confirm)

    def ask(self, prompts: list[str], purpose: str, n: int = 1, temperature: float | None = None) -> list[list[str]]:
        """The LLM's `n` answers to each prompt (as many prompts as the LLM budget pays for; an empty
        result means it is spent). Each request gets its own seed so reruns are identical."""
        cfg: LLMSearchConfig = self.config  # type: ignore[assignment]
        temp = cfg.llm_temperature if temperature is None else temperature
        requests = []
        for text in prompts:
            self.calls += 1
            seed = self.ctx.seed * 100003 + self.calls
            requests.append(ChatRequest.of(text, temperature=temp, max_tokens=cfg.llm_max_tokens, n=n, seed=seed))
        answers = [c.texts for c in self.llm.chat_many(requests, purpose=purpose)]
        if not answers and prompts:
            raise LLMBudgetExhausted(self.llm.budget_message())
        return answers

    def score_instructions(self, instructions: list[str], origins: list[dict[str, Any]]) -> list[tuple[float, str]]:
        """(train fitness, instruction) of each new instruction (already-scored ones are answered free)."""
        keep = [(t, o) for t, o in zip(instructions, origins, strict=True) if t]
        fits = self.evaluate([self.prompt(t) for t, _ in keep], [o for _, o in keep])
        self.state.round_done()
        return [(f, t) for f, (t, _) in zip(fits, keep, strict=False)]


def sign_test_p(wins: int, losses: int) -> float:
    """P(at least `wins` wins in wins + losses fair coin flips): how likely the win margin is by chance."""
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


def extract_instructions(text: str, open_tag: str = "<START>", close_tag: str = "<END>") -> list[str]:
    """Instructions in an LLM answer: the text between tags when there are any, else its first line
    of at least three words (small models seldom keep to the tags). Cleaned and length-capped."""
    found = re.findall(re.escape(open_tag) + r"(.*?)(?:" + re.escape(close_tag) + r"|$)", text, flags=re.S)
    if not found:
        lines = [ln for ln in (x.strip() for x in text.splitlines()) if len(ln.split()) >= 3]
        found = lines[:1]
    return [c for c in (clean_instruction(f) for f in found) if c]


def clean_instruction(text: str) -> str:
    text = re.sub(r"^\s*(?:[-*\d.)]+\s+|(?:new |improved )?(?:prompt|instruction)\s*\d*\s*:\s*)", "", text.strip(),
                  flags=re.I)
    text = " ".join(text.replace("<START>", "").replace("<END>", "").split()).strip(" \"'`")
    if len(text) > MAX_INSTRUCTION_CHARS:
        cut = text[:MAX_INSTRUCTION_CHARS]
        text = cut[: cut.rfind(" ")] if " " in cut else cut
    return text


def example_lines(ctx: RunContext, examples, with_label: bool = True) -> list[str]:
    """Examples as text for a meta-prompt: the input fields, and the gold label word (a generative task's:
    the target text, as APE's instruction-induction demonstrations show it)."""
    out = []
    for ex in examples:
        inp = example_input(ctx, ex)
        if ctx.task.is_generative:
            label = ctx.task.target_text(ex).strip()
        else:
            label = ctx.task.words()[ctx.task.label_index(ex)][0].strip()
        out.append(f"Input: {inp}\nOutput: {label}" if with_label else f"Input: {inp}")
    return out


def example_input(ctx: RunContext, example) -> str:
    """An example's input fields as one text (a generative example's fields may hold more than its input)."""
    if ctx.task.is_generative:
        return " ".join(str(example.fields[f]) for f in ctx.task.spec.input_fields)
    return " ".join(str(v) for v in example.fields.values())

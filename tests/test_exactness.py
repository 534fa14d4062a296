"""Scores stay exact on every model the code accepts, inputs fit the model, and `eval` scores held-out data only.

Tiny randomly initialised models of real architectures (SmolLM2's tokenizer): Mistral (every layer a
16-token sliding window), Gemma 3 (sliding and full layers mixed), LFM2 (convolution layers, which no
packed mask can describe: the padded path) and a GPT-2 with 128 positions.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import prompttune
from prompttune.cli import app
from prompttune.errors import DataError
from prompttune.models import load_backbone
from prompttune.prompts.hard import HardPrompt
from prompttune.search.engine import CandidateScorer
from prompttune.serve.mixed import answer_hidden_mixed
from prompttune.testing import score_padded, score_reference

SINGLE = [[" negative"], [" positive"]]
MULTI = [[" not good at all"], [" positive", " great"]]
LONG = "Review: " + "an endless, meandering and curiously flat film that never finds its feet, " * 3 + "\nSentiment:"
TEXTS = [LONG, "Review: bad\nSentiment:", LONG.replace("endless", "tireless") + " no"]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=1e-4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, backbone):
    """Loads (through `load_backbone`, as a user would) a tiny random model of the named architecture."""
    import transformers as tf

    tok = backbone.tokenizer
    common = dict(vocab_size=len(tok), hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    configs = {
        "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(num_hidden_layers=2, intermediate_size=128,
                                                                  sliding_window=16, **common)),
        "gemma3": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
            num_hidden_layers=3, intermediate_size=128, head_dim=16, sliding_window=8,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"], **common)),
        "lfm2": lambda: tf.Lfm2ForCausalLM(tf.Lfm2Config(num_hidden_layers=3, intermediate_size=128,
                                                         block_auto_adjust_ff_dim=False, full_attn_idxs=[1], **common)),
        "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=64, n_layer=2,
                                                         n_head=4, pad_token_id=tok.pad_token_id)),
    }
    loaded = {}

    def get(name: str):
        if name not in loaded:
            torch.manual_seed(0)
            path = tmp_path_factory.mktemp(f"tiny-{name}")
            configs[name]().save_pretrained(path)
            tok.save_pretrained(path)
            loaded[name] = load_backbone(str(path), device="cpu")
        return loaded[name]

    return get


def _check_scores(bb, ids) -> None:
    """`score` (shared prompt prefix and inline, per-example prompts, deep prompts), the padded batch and the
    server's mixed pass all equal the naive full-logits reference."""
    prompt = bb.embed(torch.arange(1000, 1020)).detach()  # 20 vectors: longer than any window here
    for words in (SINGLE, MULTI):
        labels = bb.label_words(words)
        for p in (None, prompt):
            reference = score_reference(bb, ids, labels, p)
            for shared in (True, False):
                bb.share_prompt_prefix = shared
                assert _close(bb.score(ids, labels, p), reference), (words, p is None, shared)
            if words is SINGLE:
                for side in ("left", "right"):
                    assert _close(score_padded(bb, ids, labels, p, side), reference), side
        per = torch.stack([prompt, prompt.flip(0), 0.5 * prompt])
        reference = torch.cat([score_reference(bb, [x], labels, q) for x, q in zip(ids, per, strict=True)])
        assert _close(bb.score(ids, labels, per), reference)
    mixed = answer_hidden_mixed(bb, ids, [0, -1, 1], [prompt, prompt[:5]])
    for x, j, h in zip(ids, [0, -1, 1], mixed, strict=True):
        embeds, mask, positions, answer = bb.padded_inputs([x], None if j < 0 else [prompt, prompt[:5]][j])
        alone = bb.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        assert torch.allclose(h, alone[0, answer[0]], atol=1e-4)


def _check_gradients(bb, ids) -> None:
    """The packed path is the training path: d(loss)/d(prompt) equals the reference's."""
    labels = bb.label_words(SINGLE)
    golds = torch.tensor([0, 1, 0])
    grads = []
    for run in (lambda p: bb.score(ids, labels, p), lambda p: score_reference(bb, ids, labels, p)):
        prompt = bb.embed(torch.arange(1000, 1020)).detach().requires_grad_(True)
        F.cross_entropy(run(prompt), golds).backward()
        grads.append(prompt.grad)
    assert grads[0].abs().max() > 0 and torch.allclose(grads[0], grads[1], atol=1e-5)


@pytest.mark.parametrize("name", ["mistral", "gemma3"])
@torch.no_grad()
def test_sliding_window_models_score_packed_equal_padded_equal_reference(name, tiny):
    bb = tiny(name)
    ids = bb.tokenize(TEXTS)
    window = bb.model.config.sliding_window
    assert max(map(len, ids)) > 2 * window  # the window cuts into the input
    _check_scores(bb, ids)
    assert bb.attention.packable and window in bb.attention.windows.values(), bb.attention  # packed, not padded
    soft = bb.embed(torch.arange(1000, 1020))
    deep = bb.prefix_from_embeddings(soft)  # every layer keeps all 20 positions, window or not
    assert {k.shape[-2] for k, _ in deep} == {20}
    labels = bb.label_words(MULTI)
    assert _close(bb.score(ids, labels, deep), score_reference(bb, ids, labels, soft))


@pytest.mark.parametrize("name", ["mistral", "gemma3", "lfm2"])
def test_gradients_through_the_scoring_path_equal_the_reference(name, tiny):
    bb = tiny(name)
    bb.share_prompt_prefix = True
    _check_gradients(bb, bb.tokenize(TEXTS))


@pytest.mark.parametrize("name", ["mistral", "gemma3", "lfm2"])
@torch.no_grad()
def test_search_engine_scores_equal_the_reference(name, tiny, sst2):
    """Cached inputs with candidates after them, and shared instruction prefixes, on inputs longer than the window
    (and, for LFM2, on the padded path)."""
    bb = tiny(name)
    examples = [ex for ex in sst2.split("dev") if len(bb.tokenize([sst2.render(ex)])[0]) > 24][:3]
    template = sst2.spec.template
    prompts = [HardPrompt.build(template), HardPrompt.build(template, separator=" {so} it was"),
               HardPrompt.build(template, instruction="Is it good?")]
    for words in (SINGLE, MULTI):
        labels = bb.label_words(words)
        scorer = CandidateScorer(bb, sst2, labels, examples)
        for prompt, fast in zip(prompts, scorer.score(prompts), strict=True):
            reference = score_reference(bb, bb.tokenize(scorer.render(prompt.template)), labels)
            assert _close(fast, reference), (prompt, (fast - reference).abs().max())


@torch.no_grad()
def test_a_model_no_packed_mask_describes_takes_the_padded_path(tiny):
    bb = tiny("lfm2")
    _check_scores(bb, bb.tokenize(TEXTS))
    assert not bb.attention.packable and "conv" in bb.attention.why_not_packable


@torch.no_grad()
def test_scoring_and_generation_emit_no_deprecation_warnings(tiny, sst2):
    """transformers renamed `past_key_values` to `cache`: no call of ours may use the old name (the demo printed
    the FutureWarning in the middle of its output)."""
    bb = tiny("mistral")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = bb.tokenize(TEXTS[1:2] * 2)
        labels = bb.label_words(MULTI)
        soft = bb.embed(torch.arange(1000, 1004))
        for shared in (True, False):
            bb.share_prompt_prefix = shared
            bb.score(ids, labels, soft)
        deep = bb.prefix_from_embeddings(soft)
        bb.score(ids, labels, deep)
        answer_hidden_mixed(bb, ids, [0, -1], [soft])
        bb.generate(["Review: bad\nSentiment:"], soft, max_new_tokens=2)
        bb.generate(["Review: bad\nSentiment:"], deep, max_new_tokens=2)
        template = sst2.spec.template
        CandidateScorer(bb, sst2, labels, sst2.split("dev")[:2]).score([HardPrompt.build(template, separator="!!")])
    deprecations = [f"{w.category.__name__}: {w.message}" for w in caught
                    if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not deprecations, deprecations


def test_long_inputs_fit_a_128_position_model(tiny):
    """Inputs longer than the context minus prompt and answer are cut (not an IndexError), scored exactly on what
    is kept, and the run warns once, with a count."""
    bb = tiny("gpt2")
    texts = [LONG * 3, "Review: fine\nSentiment:", LONG.replace("endless", "tireless") * 3]
    prompt = bb.embed(torch.arange(1000, 1008)).detach()
    labels = bb.label_words(MULTI)  # a 4-token word: 3 tokens after the answer position
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        ids = bb.tokenize(texts)
        scores = bb.score(ids, labels, prompt)
        reference = score_reference(bb, ids, labels, prompt)
        generated = bb.generate(texts, prompt, max_new_tokens=4)
        bb.score(bb.tokenize(texts), labels, prompt)
    cuts = [str(w.message) for w in caught if "longer than" in str(w.message)]
    assert len(cuts) == 1 and cuts[0].startswith("2 of 3 inputs"), cuts
    assert bb.context_length == 128 and bb.truncated_inputs == 2
    assert _close(scores, reference) and len(generated) == 3
    assert max(map(len, bb.fit(ids, 8 + labels.answer_tokens))) == 128 - 8 - 3


def test_a_run_records_how_many_inputs_it_cut(tiny, tmp_path):
    """The count of cut inputs survives the run: prompt.json says how many this run's inputs were truncated."""
    rows = [("negative" if i % 2 else "positive", LONG * 3 + f" {i}") for i in range(24)]  # each over 128 tokens
    (tmp_path / "long.csv").write_text("label,text\n" + "".join(f'{y},"{x}"\n' for y, x in rows))
    (tmp_path / "long.yaml").write_text(
        f"name: long\ndata: {{train: {tmp_path / 'long.csv'}}}\nfields: {{text: text}}\ntemplate: \"{{text}}\"\n"
        'verbalizer: {negative: " bad", positive: " good"}\n')
    report = prompttune.train("zero-shot", tiny("gpt2"), str(tmp_path / "long.yaml"), shots=2, seed=0,
                              out=tmp_path / "run", progress=False)
    data = report.meta["data"]  # zero-shot scores the dev draw and the held-out rest, each input once
    assert data["truncated_inputs"] == data["dev_size"] + data["eval_size"] == 20


def test_truncation_keeps_the_end_and_only_the_models_own_special_tokens(tiny):
    """SmolLM2's tokenizer adds no BOS, so a cut input is its last tokens (it used to become "Review" + the tail);
    a tokenizer that adds a BOS keeps it in front."""
    from tokenizers import processors

    from prompttune.models import CausalLMBackbone

    bb = tiny("gpt2")
    text = LONG * 3
    full = bb.tokenizer(text)["input_ids"]
    assert len(full) > 128
    assert bb.tokenize([text])[0] == full[-128:]
    assert bb.tokenize([text], reserve=10)[0] == full[-118:]
    with_bos = copy.deepcopy(bb.tokenizer)
    bos = with_bos.convert_tokens_to_ids("<|im_start|>")
    with_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    other = CausalLMBackbone(bb.model, with_bos, "gpt2-with-bos", bb.device, bb.dtype)
    assert other.tokenize([text], reserve=10)[0] == [bos] + full[-117:]


def test_eval_leaves_out_what_training_drew_and_equals_the_train_time_figures(tiny_llama_dir, data_dir, tmp_path):
    """RTE's k-shot dev set is drawn from its dev split, which is also where `eval` scores by default."""
    bb = load_backbone(str(tiny_llama_dir), device="cpu")
    for limit in (None, 40):
        out = tmp_path / f"zs-{limit}"
        report = prompttune.train("zero-shot", bb, "rte", data_dir, shots=4, seed=0, out=out, eval_limit=limit,
                                  progress=False)
        assert report.meta["data"]["eval_split"] == "dev"
        result = prompttune.evaluate_artifact(out, data_dir=data_dir, limit=limit, model=bb)
        assert (result.n, result.accuracy, result.macro_f1, result.loss) == (
            report.test.n, report.test.accuracy, report.test.macro_f1, report.test.loss)
        assert (result.split, result.excluded) == ("dev", 8)  # 4 dev shots per class
        if limit is None:
            full = result
    assert result.n == 40
    cli = CliRunner().invoke(app, ["eval", str(tmp_path / "zs-None"), "--data-dir", str(data_dir)],
                             catch_exceptions=False)
    assert cli.exit_code == 0, cli.output
    assert "split 'dev': 8 examples left out as used in training or selection" in cli.output
    assert f"accuracy={full.accuracy:.4f} macro_f1={full.macro_f1:.4f}" in cli.output.splitlines()[-1]


def test_eval_refuses_an_artifact_whose_training_data_changed(tiny_llama_dir, tmp_path):
    """Same number of rows per label, other text: the draw is by position, so what training used cannot be told."""
    rows = [{"text": f"review number {i}", "label": str(i % 2)} for i in range(12)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    task = tmp_path / "toy.yaml"
    task.write_text(f"name: toy\ndata: {{train: {tmp_path / 'train.jsonl'}, test: {tmp_path / 'test.jsonl'}}}\n"
                    "template: \"{text} It was\"\nverbalizer: {'0': ' bad', '1': ' good'}\n")
    bb = load_backbone(str(tiny_llama_dir), device="cpu")
    out = tmp_path / "zs"
    prompttune.train("zero-shot", bb, str(task), shots=2, seed=0, out=out, progress=False)
    assert prompttune.evaluate_artifact(out, model=bb).excluded == 0  # test rows are not train rows
    train = tmp_path / "train.jsonl"
    train.write_text(train.read_text().replace("review number 5", "review number 7"))  # same size, same labels
    with pytest.raises(DataError, match=r"changed since training \(the train data \(.*train.jsonl\) changed\)"):
        prompttune.evaluate_artifact(out, model=bb)


def test_the_truncation_count_is_bounded_and_counts_every_batch(tiny):
    """A server cuts inputs for as long as it runs: the count goes on, the memory of recent cuts does not grow."""
    from prompttune.models import CausalLMBackbone
    from prompttune.models.context import _RECENT_CUTS

    base = tiny("gpt2")
    bb = CausalLMBackbone(base.model, base.tokenizer, "gpt2-server", base.device, base.dtype)
    batches = [[[7] * 200 + [b, i // 100, i % 100] for i in range(1000)] for b in range(5)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in batches:
            bb.fit(batch)
        bb.fit(batches[-1])  # cut again just now: not counted twice
    cuts = [str(w.message) for w in caught if "longer than" in str(w.message)]
    assert len(cuts) == 1 and cuts[0].startswith("1000 of 1000 inputs"), cuts
    assert bb.truncated_inputs == 5000
    assert len(bb._recent_cuts) == _RECENT_CUTS < 5000

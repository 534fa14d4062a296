"""Test helpers shared by several test files."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import prompttune
from prompttune.artifact import ARTIFACT_TENSORS

# Learning tests score on this many held-out SST-2 dev sentences (the dev shots are left out of them).
HELD_OUT_DEV = 200
# What a learning test asks of a method over its starting point: 3 accuracy points (6 of 200 examples). The
# epsilon keeps exactly 3 points a pass, which float addition does not (0.795 + 0.03 > 0.825).
GAIN = 0.03 - 1e-9


def assert_resume_is_bit_identical(method: str, tmp_path: Path, crash_after: int, **train_kwargs) -> dict:
    """Train uninterrupted, and separately kill the run after its `crash_after`-th optimizer step and resume it; the two
    artifacts must hold identical tensors. Returns them."""
    whole = prompttune.train(method, out=tmp_path / "whole", **train_kwargs)

    steps_done = []

    def crash(step, loss):  # counts steps across phases, for methods that train in several
        steps_done.append(step)
        if len(steps_done) == crash_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prompttune.train(method, out=tmp_path / "cut", callbacks=[crash], **train_kwargs)
    resumed = prompttune.train(method, out=tmp_path / "cut", resume=True, **train_kwargs)
    a = load_file(str(whole.out_dir / ARTIFACT_TENSORS))
    b = load_file(str(resumed.out_dir / ARTIFACT_TENSORS))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert whole.meta["history"] == resumed.meta["history"]
    return a


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_in_thread(server, start_timeout: float = 30.0, stop_timeout: float = 20.0) -> Iterator[str]:
    """Run a uvicorn `Server` in a daemon thread; yields its base URL once it has started (failing the
    test when it does not start within `start_timeout`), and stops it afterwards."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=stop_timeout)


@contextmanager
def uvicorn_in_thread(app) -> Iterator[str]:
    """`app` served by plain uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    with server_in_thread(server) as url:
        yield url

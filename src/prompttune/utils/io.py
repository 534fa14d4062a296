"""Atomic writes: a reader never sees a half-written file, a killed process never leaves one.

Every file is written under a temporary name beside its target, fsync-ed, renamed into place, and
the directory fsync-ed, so a power cut leaves the old file or the new one. Files and directories
are created with the user's umask (mode 0o666 / 0o777 minus umask), not tempfile's private 0600.
A multi-file artifact is written whole into a temporary directory and swapped in with one rename
(`write_dir_atomically`), so its files can never come from two different writes; where the OS cannot
swap it (a mount point, a parent directory the user may not write) that raises `SwapUnavailable`
before anything changed, and the caller writes file by file instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), else by setting it back."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_file_beside(path: Path) -> Path:
    """Create (exclusively, mode 0o666 minus umask) an empty temporary file beside `path`."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextmanager
def _temp_beside(path: Path) -> Iterator[Path]:
    """A temporary file beside `path`; written by the caller, then fsync-ed and renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file_beside(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with _temp_beside(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_text(data: Any) -> str:
    """`data` as the JSON text the atomic writers store (sorted keys, indented)."""
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json_text(data))


def atomic_save_tensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Save tensors with safetensors (never pickle), atomically."""
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with _temp_beside(Path(path)) as tmp:
        save_file(contiguous, str(tmp), metadata=dict(metadata) if metadata else None)
        os.chmod(tmp, 0o666 & ~current_umask())  # safetensors replaces the file with a private (0600) one


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


class SwapUnavailable(OSError):
    """The OS refused to create a directory beside the target or to rename the target (it is a mount
    point, its parent is not writable, ...); nothing was changed."""


# the errors that say "not here" rather than "not at all": writing inside the directory may still work
_SWAP_REFUSALS = (errno.EXDEV, errno.EBUSY, errno.EACCES, errno.EPERM, errno.EROFS)


def _refused(exc: OSError) -> bool:
    return exc.errno in _SWAP_REFUSALS


def atomic_replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written directory into place, replacing an older one.

    Where the OS can swap two directories atomically, a reader sees the old directory or the new
    one, never a mix and never nothing; elsewhere the old one is renamed aside first (and back if
    the new one cannot take its place). A rename the OS refuses raises `SwapUnavailable`.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(tmp_dir, 0o777 & ~current_umask())  # mkdtemp makes 0700 directories
    fsync_dir(tmp_dir)
    if final_dir.exists() and _rename_exchange(tmp_dir, final_dir):
        fsync_dir(final_dir.parent)
        shutil.rmtree(tmp_dir, ignore_errors=True)  # now the old directory
        return
    old = None
    try:
        if final_dir.exists():
            old = final_dir.with_name(f".{final_dir.name}.old-{secrets.token_hex(6)}")
            os.replace(final_dir, old)
        try:
            os.replace(tmp_dir, final_dir)
        except OSError:
            if old is not None:
                os.replace(old, final_dir)
            raise
    except OSError as exc:
        if _refused(exc):
            raise SwapUnavailable(exc.errno, f"cannot swap a new directory in place of {final_dir}: "
                                             f"{exc.strerror}") from exc
        raise
    fsync_dir(final_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_dir_atomically(final_dir: Path, write: Callable[[Path], None],
                         keep: Callable[[Path], bool] = lambda p: False) -> None:
    """Write a directory whole and swap it in place of `final_dir`.

    `write(tmp)` fills a fresh temporary directory beside `final_dir`; the entries of the existing
    `final_dir` for which `keep(entry)` holds are carried over first (hard links, else copies), the
    rest (checkpoints, stale files) go with the old directory. Every file is fsync-ed before the swap.
    Raises `SwapUnavailable`, with `final_dir` unchanged, where the OS refuses the temporary
    directory or the swap.
    """
    final_dir = Path(final_dir).resolve()  # "." has no name to swap; a symlink keeps pointing at the new copy
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = final_dir.with_name(f".{final_dir.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.mkdir(tmp, 0o777)  # the umask applies
            break
        except FileExistsError:
            continue
        except OSError as exc:
            if _refused(exc):
                raise SwapUnavailable(exc.errno, f"cannot create a directory beside {final_dir}: "
                                                 f"{exc.strerror}") from exc
            raise
    try:
        if final_dir.is_dir():
            for entry in final_dir.iterdir():
                if keep(entry):
                    if entry.is_dir():
                        shutil.copytree(entry, tmp / entry.name, copy_function=_link_or_copy)
                    else:
                        _link_or_copy(str(entry), str(tmp / entry.name))
        write(tmp)
        for root, _, files in os.walk(tmp):
            for name in files:
                fsync_file(Path(root) / name)
            fsync_dir(Path(root))
        atomic_replace_dir(tmp, final_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

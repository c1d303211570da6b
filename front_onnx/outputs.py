"""Every file front-onnx writes goes through here: the overwrite guard and the atomic write.

``guard`` refuses an output that is, or resolves through a link to, one of the command's
input files (a model, its external data, a learngene, a data file), or that is another
output of the same command. ``staged`` writes a file (and its companions, such as a
model's ``.data``) into a hidden folder next to its destination, fsyncs and renames
them into place (companions first, the named file last) only when everything succeeded,
so a reader never sees half a file and a failure leaves existing files untouched.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from front_onnx.errors import OutputRefused

__all__ = ["data_companion", "guard", "staged", "write_bytes", "write_text"]


def data_companion(path: str | Path) -> Path:
    """The external data file a model written to ``path`` may have: ``path + '.data'``."""
    return Path(str(path) + ".data")


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name the same file: after resolving links (also for files that
    do not exist yet), or as the same inode (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def guard(outputs: Iterable[str | Path | None], inputs: Iterable[str | Path]) -> None:
    """Refuse (OutputRefused, one line naming both paths) before anything is written: an
    output that is an input or resolves to one through links, and two outputs that
    are the same file. ``None`` outputs (options not given) are skipped."""
    ins = [Path(p) for p in inputs]
    outs = [Path(p) for p in outputs if p is not None]
    for i, out in enumerate(outs):
        for p in ins:
            if _same(out, p):
                raise OutputRefused(f"{out}: output would overwrite the input file {p}; choose another path")
        for other in outs[:i]:
            if _same(out, other):
                raise OutputRefused(f"{out}: the same file is also the output {other} of this command; "
                                    "choose another path")
        if out.is_dir():
            raise OutputRefused(f"{out}: is a directory, not a file to write")


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged(path: str | Path) -> Iterator[Path]:
    """Yield a path with the same file name inside a fresh hidden folder next to ``path``.
    Write the file there, and any companion beside it (a model's ``NAME.data``, so the
    location recorded in the model is already right). On success every file written
    there is fsynced and renamed into place, companions first and ``path`` last; on any
    error nothing is moved. The folder is removed either way."""
    dest = Path(os.path.abspath(os.fspath(path)))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        tmp = tmpdir / dest.name
        yield tmp
        if not tmp.is_file():
            raise RuntimeError(f"{dest}: nothing was written")  # a bug of the caller, not of the input
        written = sorted(p for p in tmpdir.iterdir() if p.name != dest.name) + [tmp]
        for p in written:
            _fsync(p)
        for p in written:
            os.replace(p, dest.parent / p.name)
        _fsync(dest.parent, directory=True)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see ``staged``)."""
    with staged(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see ``staged``)."""
    return write_bytes(path, text.encode("utf-8"))

"""Process time/memory helpers shared by the benchmarks (speed.py, transfer_speed.py).

Each benchmark measures one operation per fresh child process; these helpers read that
child's own peak memory and manage the model files it works on.
"""
from __future__ import annotations

import resource
import sys
import threading
from pathlib import Path


# --------------------------------------------------------------------------- memory
def status_kib(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status in KiB (empty off Linux)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in keys:
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def ru_maxrss_bytes() -> int:
    """getrusage's peak RSS of this process (KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def peak_rss_bytes() -> int:
    """Peak RSS of this process so far: VmHWM where /proc has it, else ru_maxrss.

    VmHWM belongs to the child's own address space and counts resident file-backed pages
    (a memory-mapped ``.onnx.data``) too. On Linux ru_maxrss is NOT the child's own peak:
    at exec the kernel folds the replaced address space's high-water mark into it, and
    subprocess starts the child with vfork, so the child inherits the *parent's* peak
    (likewise RUSAGE_CHILDREN's ru_maxrss in the parent). Use it only as a cross-check.
    """
    hwm = status_kib("VmHWM").get("VmHWM")
    return hwm * 1024 if hwm else ru_maxrss_bytes()


class MemSampler:
    """Polls /proc/self/status in a thread for peak anonymous and file-backed RSS (Linux
    only): VmHWM has no per-kind split and cannot be reset, so per-phase peaks need sampling.
    Profile/phase breakdowns only (it costs a little time). Samples on enter and exit too,
    so a phase shorter than ``interval`` is still seen."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak_anon = self.peak_file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        s = status_kib("RssAnon", "RssFile")
        self.peak_anon = max(self.peak_anon, s.get("RssAnon", 0) * 1024)
        self.peak_file = max(self.peak_file, s.get("RssFile", 0) * 1024)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def reset(self) -> None:
        """Start a new phase: peaks from the current RSS."""
        self.peak_anon = self.peak_file = 0
        self.sample()

    def __enter__(self) -> MemSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# --------------------------------------------------------------------------- model files
def data_file(p: Path) -> Path:
    """The external-data file next to a model: ``<name>.onnx.data``."""
    return p.with_name(p.name + ".data")


def model_files(p: Path) -> list[Path]:
    """The model and its external-data file, those that exist."""
    return [f for f in (p, data_file(p)) if f.exists()]


def model_size(p: Path) -> int:
    """Bytes on disk of a model, external data included."""
    return sum(f.stat().st_size for f in model_files(p))


def warm_page_cache(paths: list[Path]) -> None:
    """Read the models (and their data) once, so every measured run sees a warm page cache
    and times the work rather than the disk. One reused buffer: no memory growth here."""
    buf = bytearray(16 << 20)
    for p in paths:
        for f in model_files(p):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


def remove_output(p: Path) -> None:
    """Delete a model and its external-data file, if present (before each repeat, so none
    measures overwriting a previous output)."""
    for f in (p, data_file(p)):
        f.unlink(missing_ok=True)

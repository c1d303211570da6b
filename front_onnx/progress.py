"""Progress bars for long work (extraction over templates, writing, validation sessions).

Off unless a caller turns them on with ``shown()``: the CLI does when stderr is a terminal
and neither ``--json`` nor ``-q`` is given, so pipelines, tests and the Python API see no
bar. Bars are drawn by tqdm on stderr and cleared when done (``leave=False``).
"""
from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("front_onnx_progress", default=False)


@contextlib.contextmanager
def shown(on: bool = True) -> Iterator[None]:
    """Draw progress bars on stderr inside this block (when ``on``)."""
    token = _enabled.set(on)
    try:
        yield
    finally:
        _enabled.reset(token)


def enabled() -> bool:
    return _enabled.get()


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:  # a core dependency; a stripped install simply draws no bar
        return None
    return tqdm


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def bar(total: int, desc: str, unit: str = "it") -> Any:
    """A bar of ``total`` steps (``update()`` after each), or one that draws nothing."""
    tqdm = _tqdm() if enabled() else None
    if tqdm is None or total <= 0:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """``items``, with a bar while they are consumed when bars are shown."""
    tqdm = _tqdm() if enabled() else None
    if tqdm is None:
        return items
    return tqdm(items, total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)

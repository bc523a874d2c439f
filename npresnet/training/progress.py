"""Progress displays for one epoch: a tqdm bar, a plain line printer, or nothing.

Each has ``update(postfix)`` (one batch done; ``postfix`` maps a name such as ``"loss"`` to its
text) and ``close()``; ``make_progress`` picks one for ``--progress``.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, TextIO

__all__ = ["NoProgress", "PlainProgress", "Progress", "TqdmProgress", "make_progress"]


class Progress(Protocol):
    def update(self, postfix: dict[str, str]) -> None: ...

    def close(self) -> None: ...


class PlainProgress:
    """A fallback progress display: one line about every 10% of the epoch."""

    def __init__(self, total: int, desc: str, stream: TextIO) -> None:
        self.total, self.desc, self.stream, self.n = total, desc, stream, 0
        self.every = max(1, total // 10)

    def update(self, postfix: dict[str, str]) -> None:
        self.n += 1
        if self.n % self.every == 0 or self.n == self.total:
            text = " ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"{self.desc} {self.n}/{self.total} {text}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


class TqdmProgress:
    def __init__(self, tqdm: Any, total: int, desc: str) -> None:
        self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)

    def update(self, postfix: dict[str, str]) -> None:
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class NoProgress:
    def update(self, postfix: dict[str, str]) -> None:
        pass

    def close(self) -> None:
        pass


def make_progress(mode: str, total: int, desc: str) -> Progress:
    """The display for ``mode`` (auto | tqdm | plain | none) over ``total`` batches, labelled ``desc``."""
    if mode in ("auto", "tqdm"):
        try:
            from tqdm.auto import tqdm

            return TqdmProgress(tqdm, total, desc)
        except ImportError:
            if mode == "tqdm":
                raise ImportError("--progress tqdm needs tqdm: pip install 'npresnet[progress]'") from None
    if mode == "none":
        return NoProgress()
    return PlainProgress(total, desc, sys.stderr)

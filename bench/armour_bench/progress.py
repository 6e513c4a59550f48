"""Progress of a long benchmark: the step running now, on a terminal bar or as plain lines.

`Progress(total)` is a context manager. `step(label)` announces the step that starts now (the
bar shows it while it runs — a two-minute torch.compile is named while it compiles, not after).
On a terminal with tqdm installed it is a tqdm bar on stderr; otherwise (output redirected to a
file or a CI log, or no tqdm) each step is one plain line "[3/12] 41s label". Inside the block,
Python warnings and log records are written above the bar instead of being spliced into it.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


class Progress:
    def __init__(self, total: int, stream=None, bar: bool | None = None):
        self.total, self.done = max(total, 1), 0
        self.stream = stream or sys.stderr
        tqdm = _tqdm()
        if bar is None:
            bar = tqdm is not None and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=self.total, file=self.stream, dynamic_ncols=True, leave=True,
                        bar_format="{n_fmt}/{total_fmt} [{elapsed}<{remaining}] {desc}") if bar and tqdm else None
        self.start = time.perf_counter()
        self._started = False
        self._stack = contextlib.ExitStack()

    def step(self, label: str) -> None:
        """The step `label` starts now (the previous one, if any, is done)."""
        if self._started:
            self.done += 1
            if self.bar is not None:
                self.bar.update(1)
        self._started = True
        if self.bar is not None:
            self.bar.set_description_str(label)
        else:
            elapsed = time.perf_counter() - self.start
            print(f"[{self.done + 1}/{self.total}] {elapsed:4.0f}s {label}", file=self.stream, flush=True)

    def write(self, text: str) -> None:
        """A line of text above the bar (or plainly)."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def __enter__(self):
        progress = self

        def show(message, category, filename, lineno, file=None, line=None):
            progress.write(warnings.formatwarning(message, category, filename, lineno, line).rstrip())

        self._stack.enter_context(warnings.catch_warnings())
        warnings.showwarning = show
        if self.bar is not None:
            from tqdm.contrib.logging import logging_redirect_tqdm
            self._stack.enter_context(logging_redirect_tqdm(loggers=[logging.root, logging.getLogger("torch")]))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        if self.bar is not None:
            self.bar.update(self.total - self.bar.n)
            self.bar.close()
        return False


__all__ = ["Progress"]

"""Progress output that suits where it goes: a tqdm bar on a terminal, a plain line now and then in a log.

tqdm redraws its bar with carriage returns, up to ten times a second; in a file or a pipe (a job's log, the
demo's captured output) every redraw stays, and the log becomes mostly progress bars. :class:`ProgressBar` is
tqdm itself (same arguments, same ``update`` / ``set_postfix`` / ``close`` / ``write`` / iteration) with one
difference when its stream is not a terminal: it writes one line every ``interval`` seconds (default 30, or
``$TOKLIP_PROGRESS_INTERVAL``) with the description, count, elapsed time, ETA and rate, and a last line
when it closes. tqdm's own ``disable`` keeps its meaning (``None``: off when the stream is not a terminal).
"""
from __future__ import annotations

import os
import sys
from typing import IO, Any, Optional

from tqdm import tqdm

__all__ = ["ProgressBar", "is_terminal", "progress_interval", "INTERVAL_ENV"]

INTERVAL_ENV = "TOKLIP_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0


def is_terminal(stream: Optional[IO[str]] = None) -> bool:
    """Whether ``stream`` (default: stderr, where tqdm writes) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_interval() -> float:
    """Seconds between two progress lines in a log: ``$TOKLIP_PROGRESS_INTERVAL``, or 30."""
    value = os.environ.get(INTERVAL_ENV)
    if value is None or not value.strip():
        return DEFAULT_INTERVAL
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise ValueError(f"{INTERVAL_ENV} must be a number of seconds >= 0 (0: a line at every update); "
                         f"got {value!r}")
    return seconds


class ProgressBar(tqdm):
    """tqdm on a terminal; on any other stream, a line every ``interval`` seconds (default
    :func:`progress_interval`) and a last one on close. Time is tqdm's own clock (``self._time``)."""

    def __init__(self, iterable: Any = None, *args: Any, interval: Optional[float] = None, **kwargs: Any):
        self.log_lines = not is_terminal(kwargs.get("file"))
        self.interval = progress_interval() if interval is None else interval
        self.lines_due = 0  # intervals since the start that have had their line
        if self.log_lines:
            # tqdm checks the time at every update (miniters=1) but refreshes only once an interval has passed
            kwargs.setdefault("mininterval", self.interval)
            kwargs.setdefault("miniters", 1)
        super().__init__(iterable, *args, **kwargs)

    def display(self, msg: Optional[str] = None, pos: Optional[int] = None) -> bool:
        if not self.log_lines:
            return super().display(msg, pos)
        if msg is not None or not hasattr(self, "start_t"):  # tqdm clearing a bar, or its first draw
            return False
        elapsed = self._time() - self.start_t
        due = int(elapsed // self.interval) if self.interval > 0 else self.lines_due + 1
        if due <= self.lines_due:
            return False
        self.lines_due = due
        self._write_line()
        return True

    def clear(self, nolock: bool = False) -> None:
        if not self.log_lines:  # a line in a log stays: there is no bar to erase before tqdm.write
            super().clear(nolock)

    def close(self) -> None:
        if self.log_lines and not getattr(self, "disable", True):  # (tqdm's __del__ closes half-built bars too)
            self._ema_dt = lambda: None  # as tqdm's own last redraw: the run's mean rate, not the recent one
            self._write_line()  # the last line, whatever the interval
            self.leave = False  # tqdm's own closing redraw would repeat it
        super().close()

    def _write_line(self) -> None:
        # tqdm's own text without the bar: "train:  12% 120/1000 [01:02<07:40,  1.91it/s, loss=0.52]"
        self.fp.write(self.format_meter(**{**self.format_dict, "ncols": 0}) + "\n")
        getattr(self.fp, "flush", lambda: None)()

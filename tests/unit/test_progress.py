"""Progress output: tqdm's bar on a terminal, a line every interval (and a last one) in a log."""
from __future__ import annotations

import io

import pytest
from tqdm import tqdm

from toklip_plugin.progress import INTERVAL_ENV, ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_per_interval_and_a_last_line_not_one_per_update(clock):
    log = io.StringIO()
    with ProgressBar(total=1000, desc="train", file=log, interval=30) as bar:
        for _ in range(1000):  # 500 s at 0.5 s an update
            clock[0] += 0.5
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 500 // 30 + 1  # one per 30 s, then the last
    assert lines[0] == "train:   6% 60/1000 [00:30<07:50,  2.00it/s]"  # after 30 s: 60 updates, 470 s to go
    assert lines[-1] == "train: 100% 1000/1000 [08:20<00:00,  2.00it/s]"


def test_a_postfix_set_at_every_step_is_shown_but_does_not_add_lines(clock):
    log = io.StringIO()
    bar = ProgressBar(total=100, desc="train", file=log, interval=10)
    for step in range(1, 101):  # the trainer's way: set n, then the postfix (which refreshes)
        clock[0] += 1.0
        bar.n = step
        bar.set_postfix(loss=f"{1 / step:.4f}")
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 100 // 10 + 1
    assert lines[0].startswith("train:  10% 10/100 [00:10<") and lines[0].endswith("loss=0.1000]")
    assert lines[-1].startswith("train: 100% 100/100 [01:40<00:00,") and lines[-1].endswith("loss=0.0100]")


def test_iterating_a_log_bar_ends_with_a_line_showing_the_whole_total(clock):
    log = io.StringIO()
    for _ in ProgressBar(range(7), desc="captions", unit="batch", file=log, interval=30):
        clock[0] += 1.0
    assert log.getvalue().splitlines() == ["captions: 100% 7/7 [00:07<00:00,  1.00batch/s]"]


def test_the_interval_comes_from_the_environment(clock, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "5")
    log = io.StringIO()
    with ProgressBar(total=60, file=log) as bar:
        for _ in range(60):
            clock[0] += 1.0
            bar.update()
    assert len(log.getvalue().splitlines()) == 60 // 5 + 1
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match=f"{INTERVAL_ENV} must be a number of seconds >= 0.*got 'soon'"):
        ProgressBar(total=1, file=io.StringIO())


def test_a_message_written_between_lines_leaves_no_carriage_returns_or_blanked_bars(clock):
    log = io.StringIO()
    bar = ProgressBar(total=10, desc="train", file=log, interval=30)
    clock[0] += 31
    bar.update(5)
    ProgressBar.write("[toklip-train] a message", file=log)
    bar.update(5)
    bar.close()
    assert log.getvalue().splitlines() == ["train:  50% 5/10 [00:31<00:31,  6.20s/it]", "[toklip-train] a message",
                                           "train: 100% 10/10 [00:31<00:00,  3.10s/it]"]


def test_on_a_terminal_the_output_is_tqdms_own_bar(clock):
    def draw(cls) -> str:
        screen = Terminal()
        with cls(total=20, desc="encode", unit="img", file=screen, ncols=60) as bar:
            for _ in range(20):
                clock[0] += 0.25
                bar.update()
                bar.set_postfix(loss=0.5)
        return screen.getvalue()

    ours, theirs = draw(ProgressBar), draw(tqdm)
    assert ours == theirs
    assert ours.count("\r") > 20 and "encode: 100%" in ours  # a redrawn bar, not log lines


def test_a_disabled_bar_writes_nothing_and_none_means_off_outside_a_terminal(clock):
    for disable in (True, None):
        log = io.StringIO()
        with ProgressBar(total=3, file=log, interval=0, disable=disable) as bar:
            bar.update(3)
        assert log.getvalue() == ""
    screen = Terminal()
    with ProgressBar(total=3, file=screen, disable=None) as bar:
        bar.update(3)
    assert "3/3" in screen.getvalue()

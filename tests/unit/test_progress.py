"""Download progress as printed by `pull`: a redrawn bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io

from locallab_gguf.cli.progress import ProgressPrinter, format_duration
from locallab_gguf.models.progress import reporter_class
from locallab_gguf.sizes import format_bytes


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


MB = 1_000_000


def test_plain_lines_come_at_the_start_every_interval_and_at_the_end() -> None:
    out, clock = io.StringIO(), FakeClock()
    printer = ProgressPrinter("m.gguf", out, redraw=False, interval=5, clock=clock)
    printer(0, 100 * MB)
    clock.now += 2
    printer(20 * MB, 100 * MB)  # within the interval: nothing
    clock.now += 3
    printer(50 * MB, 100 * MB)
    clock.now += 5
    printer(100 * MB, 100 * MB)
    assert out.getvalue().splitlines() == [
        "m.gguf: 0 B of 100.0 MB (0%)",
        "m.gguf: 50.0 MB of 100.0 MB (50%), 10.0 MB/s, 5 s left",
        "m.gguf: 100.0 MB of 100.0 MB (100%), 10.0 MB/s, done in 10 s",
    ]


def test_a_terminal_gets_one_line_redrawn_with_a_bar() -> None:
    out, clock = io.StringIO(), FakeClock()
    printer = ProgressPrinter("m.gguf", out, redraw=True, clock=clock)
    printer(0, 8 * MB)
    clock.now += 1
    printer(2 * MB, 8 * MB)
    clock.now += 3
    printer(8 * MB, 8 * MB)
    text = out.getvalue()
    assert "\n" not in text[:-1] and text.endswith("\n")
    frames = text.rstrip("\n").split("\r")[1:]
    assert frames[1].startswith("[######..................] m.gguf: 2.0 MB of 8.0 MB (25%)")
    assert "2.0 MB/s, 3 s left" in frames[1]
    assert frames[2].startswith("[########################] m.gguf: 8.0 MB of 8.0 MB (100%)")


def test_reporter_class_is_what_hf_hub_download_builds_and_feeds() -> None:
    seen: list[tuple[int, int | None]] = []
    reporter_type = reporter_class(lambda done, total: seen.append((done, total)))
    with reporter_type(total=10, initial=4, unit="B", unit_scale=True, desc="f") as bar:
        bar.update(3)
        bar.update(-7)  # a resume the server refused: counting starts over
    assert seen == [(4, 10), (7, 10), (0, 10)]


def test_sizes_and_durations_read_like_the_hub_and_a_clock() -> None:
    assert [format_bytes(n) for n in (999, 98_362_432, 4_920_000_000)] == [
        "999 B",
        "98.4 MB",
        "4.9 GB",
    ]
    assert [format_duration(s) for s in (4.4, 125, 3725)] == ["4 s", "2 min 05 s", "1 h 02 min"]

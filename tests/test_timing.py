"""The timing helpers behind the comparison runner and the asv suite, on a clock of their own (the
runners advance it by fixed amounts), so that no assertion depends on how busy the machine is."""
from types import SimpleNamespace

import pytest

from nbconv.tools import timing


@pytest.fixture
def clock(monkeypatch):
    """A fake `time` for nbconv.tools.timing: `advance(seconds)` is what a runner's work takes."""
    now = [0.0]
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    return SimpleNamespace(advance=lambda seconds: now.__setitem__(0, now[0] + seconds))


def test_interleaved_medians_time_every_runner_in_turn(clock):
    order = []

    def runner(name, seconds):
        def run():
            order.append(name)
            clock.advance(seconds)
        return run

    medians = timing.interleaved_medians({"short": runner("short", 0.001), "long": runner("long", 0.004)},
                                         repeats=6, min_time=0.03)
    assert medians == pytest.approx({"short": 0.001, "long": 0.004})
    timed = order[2:]  # after one warm-up call each
    # min_time / repeats = 5 ms a sample: 5 calls of the short runner, 1 of the long one
    assert timed.count("short") == 6 * 5 and timed.count("long") == 6
    # Every round holds a switch from one runner to the other; runners timed one after the other
    # would switch once.
    assert sum(a != b for a, b in zip(timed, timed[1:])) >= 6


def test_median_seconds_of_one_runner(clock):
    durations = iter([0.002, 0.002, 0.003, 0.002, 0.009, 0.002, 0.002] * 10)
    assert timing.median_seconds(lambda: clock.advance(next(durations)), repeats=3, min_time=0.01) \
        == pytest.approx(0.002)

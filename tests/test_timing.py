"""The timing helpers behind the comparison runner and the asv suite."""
import time

from nbconv.tools.timing import interleaved_medians, median_seconds


def test_interleaved_medians_time_every_runner_in_turn():
    order = []

    def runner(name, seconds):
        def run():
            order.append(name)
            time.sleep(seconds)
        return run

    medians = interleaved_medians({"short": runner("short", 0.001), "long": runner("long", 0.004)},
                                  repeats=6, min_time=0.03)
    assert set(medians) == {"short", "long"}
    assert 0.001 <= medians["short"] < medians["long"] and 0.004 <= medians["long"] < 0.04
    timed = order[2:]  # after one warm-up call each
    assert timed.count("short") > timed.count("long") >= 6  # several calls per sample for the short one
    # Every round holds a switch from one runner to the other; runners timed one after the other
    # would switch once.
    assert sum(a != b for a, b in zip(timed, timed[1:])) >= 6


def test_median_seconds_of_one_runner():
    assert 0.002 <= median_seconds(lambda: time.sleep(0.002), repeats=3, min_time=0.01) < 0.02

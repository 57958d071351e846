"""tools/soak.py's memory verdict, on resident-memory series whose answer is known: a
leak (steady growth to the end) fails on its second half even within the whole-window
bound; caches filling during the warm-up and the first half, then level, pass however
much they filled within the gross bound; the bound itself still fails a gross rise.

No server: rss_summary and rss_failures are what the soak applies to its samples.
"""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from soak import DEFAULTS, rss_failures, rss_summary  # noqa: E402

WARMUP, DURATION = DEFAULTS["warmup"][0], DEFAULTS["duration"][0]
GROSS_MIB, SECOND_HALF = DEFAULTS["max_rss_growth_mib"][0], DEFAULTS["max_second_half_growth"][0]


def series(rss_at) -> list[tuple[float, float]]:
    """A sample every 2 s over a full run, as the soak's sampler takes them."""
    return [(t, rss_at(t)) for t in range(0, int(DURATION) + 1, 2)]


def verdict(samples) -> list[str]:
    return rss_failures(rss_summary(samples, WARMUP), GROSS_MIB, SECOND_HALF)


class SoakMemoryTest(unittest.TestCase):
    def test_a_steady_leak_fails_on_its_second_half(self) -> None:
        # 2,000 MiB, then 0.6 MiB/s: 324 MiB over the window (within the gross bound),
        # 162 in the second half (over 5% of 2,036).
        failures = verdict(series(lambda t: 2000 + 0.6 * t))
        self.assertEqual(len(failures), 1, failures)
        self.assertIn("second half", failures[0])

    def test_caches_that_fill_then_level_pass(self) -> None:
        # The build's pool run: +300 MiB over the window, all of it before the middle.
        failures = verdict(series(lambda t: 1900 + min(t - WARMUP, 240) * 1.25 if t > WARMUP else 1900))
        self.assertEqual(failures, [])

    def test_a_gross_rise_fails_the_whole_window_bound(self) -> None:
        failures = verdict(series(lambda t: 1900 + (800 if t > 200 else 0)))
        self.assertTrue(any("limit" in f for f in failures), failures)

    def test_the_quick_mode_judges_no_second_half(self) -> None:
        quick = rss_failures(rss_summary(series(lambda t: 2000 + 0.6 * t), WARMUP),
                             DEFAULTS["max_rss_growth_mib"][1], DEFAULTS["max_second_half_growth"][1])
        self.assertEqual(quick, [])


if __name__ == "__main__":
    unittest.main()

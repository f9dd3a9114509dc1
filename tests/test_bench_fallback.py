"""benchmarks/fallback.py's pure helpers: the scorecard's rows, losses, gaps and stamps."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.fallback import (
    HEADERS,
    Run,
    _longest_flat,
    _longest_step,
    first_at,
    fmt,
    loss_between,
    losses_between,
    rows,
)


def test_rows_one_per_scenario_and_client_in_order() -> None:
    runs = [
        Run("20k", "chromium", passed=True, chat_s=1.0),
        Run("150k", "chromium", passed=False, audio_loss=0.031, why="audio"),
        Run("150k", "aiortc", passed=True, audio_loss=0.01, step_down_s=1.2),
        Run("150k", "aiortc", passed=True, audio_loss=0.02, step_down_s=1.6),
        Run("oscillating", "aiortc", passed=True, mode_changes={"uplink": 2, "downlink": 3}),
    ]
    got = rows(runs)
    assert [r[:3] for r in got] == [
        ["150k", "aiortc", "2/2"],
        ["150k", "chromium", "0/1"],
        ["20k", "chromium", "1/1"],
        ["oscillating", "aiortc", "1/1"],
    ]
    assert all(len(r) == len(HEADERS) for r in got)
    by = {(r[0], r[1]): dict(zip(HEADERS, r, strict=True)) for r in got}
    assert by["150k", "aiortc"]["audio loss"] == "1.5 % (max 2.0)"
    assert by["150k", "aiortc"]["step-down"] == "1.4 s (max 1.6)"
    assert by["150k", "chromium"]["audio loss"] == "3.1 %"
    assert by["20k", "chromium"]["chat"] == "1.0 s"
    assert by["20k", "chromium"]["audio loss"] == "-"  # not measured there: never a number
    assert by["oscillating", "aiortc"]["mode changes"] == "3"
    assert rows([]) == []


def test_fmt_median_and_max_skip_missing() -> None:
    assert fmt([None, None]) == "-"
    assert fmt([2.04, None]) == "2.0 s"
    assert fmt([3.0, 1.0, 2.0]) == "2.0 s (max 3.0)"


def test_loss_between_worst_direction_and_wrapping_sequence() -> None:
    # downlink: 65500 -> 100 is 136 packets expected (16-bit wrap), 2 lost; uplink 1/100
    a = (65500, 10, 1000, 990)
    b = (100, 12, 1100, 1089)
    assert loss_between(a, b) == pytest.approx(2 / 136)
    # a direction that expected nothing counts as all lost
    assert loss_between((5, 0, 10, 10), (5, 0, 20, 20)) == 1.0


def test_longest_flat_is_the_longest_time_without_a_rise() -> None:
    assert _longest_flat([]) == 0.0
    series = [(0.0, 1), (0.5, 2), (1.0, 2), (1.5, 2), (2.0, 3), (2.5, 3)]
    assert _longest_flat(series) == pytest.approx(1.5)
    # still flat at the end of the window
    assert _longest_flat([(0.0, 1), (0.5, 2), (3.0, 2)]) == pytest.approx(2.5)


def test_first_at_uses_the_event_stamp() -> None:
    events: list[tuple[float, dict[str, Any]]] = [
        (1.0, {"event": "stats"}),
        (1.2, {"event": "chat", "n": 1}),
        (2.0, {"event": "chat"}),
    ]
    assert first_at(events, lambda e: e["event"] == "chat") == 1.2
    assert first_at(events, lambda e: e["event"] == "mode") is None


def test_longest_step_between_samples() -> None:
    assert _longest_step([]) == 0.0
    assert _longest_step([1.0]) == 0.0
    assert _longest_step([0.0, 0.5, 4.5, 5.0]) == pytest.approx(4.0)


def test_losses_between_per_direction() -> None:
    down, up = losses_between((0, 0, 0, 0), (100, 4, 200, 198))
    assert (down, up) == (pytest.approx(0.04), pytest.approx(0.01))

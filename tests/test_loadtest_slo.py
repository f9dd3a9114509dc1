"""SLO evaluation and report of the load-test harness (pure logic over counter snapshots)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtest.report import charts, probe_row, probes_table, write_json
from loadtest.runner import probe_ok, verdict
from loadtest.slo import Thresholds, consultation_window, evaluate, stream_window


def stream(
    kind: str,
    to: str,
    *,
    expected: int,
    received: int,
    lat: dict[str, int],
    freezes: int = 0,
    nbytes: int = 0,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "to": to,
        "from": "patient" if to == "doctor" else "doctor",
        "expected": expected,
        "received": received,
        "recovered": 0,
        "bytes": nbytes,
        "jitter_ms": 1.0,
        "gap_max_ms": 40.0,
        "latency_hist": lat,
        "freezes": freezes,
    }


def snap(cid: str, scale: int, **override: Any) -> dict[str, Any]:
    streams = [
        stream(
            k,
            to,
            expected=100 * scale,
            received=100 * scale,
            lat={"5": 90 * scale, "20": 10 * scale},
            nbytes=1000 * scale,
        )
        for to in ("doctor", "patient")
        for k in ("audio", "video")
    ]
    return {
        "id": cid,
        "error": "",
        "join_s": 0.4,
        "signaling_s": 0.05,
        "streams": streams,
    } | override


def test_stream_window_subtracts_the_first_snapshot() -> None:
    a = stream("video", "doctor", expected=100, received=100, lat={"5": 100}, nbytes=1000)
    b = stream(
        "video",
        "doctor",
        expected=300,
        received=296,
        lat={"5": 150, "80": 50},
        freezes=1,
        nbytes=11000,
    )
    w = stream_window(a, b, 10.0)
    assert w["expected"] == 200 and w["received"] == 196
    assert abs(w["loss"] - 0.02) < 1e-9
    assert w["latency_p50_ms"] == 5 and w["latency_p95_ms"] == 80
    assert w["latency_samples"] == 100
    assert w["freezes"] == 1
    assert abs(w["bitrate_kbps"] - 8.0) < 1e-9


def test_a_healthy_consultation_is_sustained() -> None:
    w = consultation_window(snap("c0", 1), snap("c0", 3), 10.0)
    ok, reasons = evaluate(w, Thresholds())
    assert ok, reasons


def test_each_threshold_can_fail_a_consultation() -> None:
    base = snap("c0", 1)
    th = Thresholds()
    late = snap("c0", 3, join_s=2.5)
    assert evaluate(consultation_window(base, late, 10), th)[1] == ["join 2.50 s > 2 s"]
    lossy = snap("c0", 3)
    lossy["streams"][1]["received"] -= 5  # 5 of 200 lost: 2.5%
    ok, reasons = evaluate(consultation_window(base, lossy, 10), th)
    assert not ok and "loss 2.50% > 1%" in reasons[0]
    slow = snap("c0", 3)
    slow["streams"][0]["latency_hist"] = {"5": 90, "20": 10, "120": 200}
    ok, reasons = evaluate(consultation_window(base, slow, 10), th)
    assert not ok and "p95 latency 120 ms" in reasons[0]
    frozen = snap("c0", 3)
    frozen["streams"][3]["freezes"] = 2
    ok, reasons = evaluate(consultation_window(base, frozen, 10), th)
    assert not ok and "2 freezes" in reasons[0]
    frozen_audio = snap("c0", 3)
    frozen_audio["streams"][0]["freezes"] = 2  # only video freezes count
    assert evaluate(consultation_window(base, frozen_audio, 10), th)[0]
    missing = snap("c0", 3)
    missing["streams"] = missing["streams"][:3]
    assert "3 of 4 streams" in evaluate(consultation_window(base, missing, 10), th)[1][0]
    failed = snap("c0", 3, error="join refused by the node (4001: bad token)")
    assert evaluate(consultation_window(base, failed, 10), th) == (
        False,
        ["join refused by the node (4001: bad token)"],
    )
    no_latency = snap("c0", 3)
    no_latency["streams"][2]["latency_hist"] = base["streams"][2]["latency_hist"]
    assert "no latency measured" in evaluate(consultation_window(base, no_latency, 10), th)[1][0]


def test_thresholds_are_configurable() -> None:
    base, lossy = snap("c0", 1), snap("c0", 3)
    lossy["streams"][1]["received"] -= 5
    w = consultation_window(base, lossy, 10)
    assert not evaluate(w, Thresholds())[0]
    assert evaluate(w, Thresholds(max_loss=0.05))[0]


def probe(target: str, n: int, sustained: int, *, bound: bool = False) -> dict[str, Any]:
    results = []
    for i in range(n):
        w = consultation_window(snap(f"c{i}", 1), snap(f"c{i}", 3), 10)
        ok, reasons = evaluate(w, Thresholds(max_loss=0.01 if i < sustained else -1))
        w["sustained"], w["reasons"] = ok, reasons
        results.append(w)
    return {
        "target": target,
        "consultations": n,
        "error": "",
        "window_s": 10.0,
        "forwarded_pps": 1720.0,
        "consultation_results": results,
        "sustained": sustained,
        "all_sustained": sustained == n,
        "node": {"cpu_share": 0.5, "us_per_packet": 80.0, "rss_mb": 90.0},
        "generator": {"us_per_packet": 30.0, "ratio_to_node": 0.375, "bound": bound},
        "other_load": {"cpu0": 0.02, "cpu1": 0.01},
    }


def test_probe_verdicts_and_rows() -> None:
    good, partial = probe("ours", 4, 4), probe("ours", 4, 3)
    assert probe_ok(good) and not probe_ok(partial)
    assert not probe_ok(probe("ours", 4, 4, bound=True))
    assert verdict(partial) == "3/4 sustained"
    assert "GENERATOR-BOUND" in verdict(probe("ours", 4, 4, bound=True))
    row = probe_row(good)
    assert row[:6] == ["ours", "4", "4/4", "1720", "50%", "80.0"]
    assert row[8] == "0.38x"
    failed = {"target": "janus", "consultations": 8, "error": "Janus is not installed"}
    assert probe_row(failed)[2] == "error" and not probe_ok(failed)
    assert verdict(failed) == "ERROR: Janus is not installed"
    assert probes_table([good, failed]).count("\n") == 3


def test_report_json_and_charts(tmp_path: Path) -> None:
    probes = [probe("ours", 4, 4), probe("ours", 8, 7), probe("janus", 4, 4)]
    path = write_json(tmp_path / "capacity.json", {"probes": probes})
    assert path.exists() and '"machine"' in path.read_text()
    pngs = charts(tmp_path, probes)
    assert [p.name for p in pngs] == ["load.png", "latency.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_capacity_ramps_then_bisects(monkeypatch: Any) -> None:
    """The search logic alone (each probe's outcome given by the capacity we pretend)."""
    import loadtest.runner as runner

    tried: list[int] = []

    def fake_probe(opts: Any, n: int, progress: Any = None) -> dict[str, Any]:
        tried.append(n)
        return probe("ours", n, n if n <= 13 else n - 1)

    monkeypatch.setattr(runner, "run_probe", fake_probe)
    res = runner.capacity(runner.Options(), start=4, max_n=64, resolution=1)
    assert res["capacity"] == 13 and res["first_failing"] == 14
    assert tried[:3] == [4, 8, 16] and sorted(tried[3:]) == [12, 13, 14]
    assert res["at_capacity"]["node_us_per_packet"] == 80.0

    def bound_probe(opts: Any, n: int, progress: Any = None) -> dict[str, Any]:
        return probe("ours", n, n, bound=n >= 8)

    monkeypatch.setattr(runner, "run_probe", bound_probe)
    res = runner.capacity(runner.Options(), start=4, max_n=64, resolution=1)
    assert res["capacity"] == 8 and res["generator_bound"]  # a lower bound, search stopped
    assert [p["consultations"] for p in res["probes"]] == [4, 8]

"""`compat run`: the reduced (CI) browser matrix and the SDP suite, for real.

`test_reduced_matrix` runs the command exactly as a developer does (as root: it makes its own
loopback-only namespace): Debian's Chromium and Firefox ESR through puppeteer-core, the node,
the core scenarios of the chromium-firefox pair and the SDP suite, then checks the exit
status, report.json (every cell and SDP check passed, with evidence) and report.html
(self-contained, screenshots inline). The other tests cover the bad-input paths: a browser
that cannot launch fails its cells with the reason and never hangs the run, and the SDP
checker flags answers that break the rules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from compat import packages, sdp
from compat.browsers import default_pairs, full_pairs, load_browsers, parse_pair
from loadtest.netns import netns_available

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "sdp"


def _need_root() -> None:
    ok, why = netns_available()
    if not ok:
        pytest.fail(f"compat run needs network namespaces (make test runs as root): {why}")


def _compat(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compat", "run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(900)
def test_reduced_matrix(tmp_path: Path) -> None:
    """The CI matrix is all green, with evidence per cell, in every output format."""
    _need_root()
    out = tmp_path / "report"
    res = _compat(["--report-dir", str(out), "--timeout", "840"], timeout=880)
    log = f"--- stdout\n{res.stdout[-6000:]}\n--- stderr\n{res.stderr[-4000:]}"
    assert res.returncode == 0, log
    assert "ALL GREEN" in res.stdout, log
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    older = [c for c in report["cells"] if c["pair"] == "chromium-firefox140"]
    cells = [c for c in report["cells"] if c["pair"] == "chromium-firefox"]
    assert {c["pair"] for c in report["cells"]} == {"chromium-firefox", "chromium-firefox140"}
    # The older Firefox ESR (fetched by compat from Debian's archive) in the H264 room: it
    # declares H264 (getCapabilities) that its SDP lacks; both settle on VP8 (issue 12).
    assert sorted(c["scenario"] for c in older) == ["codec", "codec-late"], log
    assert all(c["status"] == "pass" for c in older), log
    for c in older:
        assert c["browsers"]["b"]["version"].startswith("140."), c["browsers"]
        assert c["evidence"]["expected"] == "VP8", c["evidence"]
        assert c["evidence"]["codecs"]["b"]["video"] == "VP8", c["evidence"]
    names = {c["scenario"] for c in cells}
    assert {
        "join-admit",
        "media",
        "chat-data",
        "exam-camera",
        "ice-restart",
        "codec",
        "codec-late",
        "leave",
        "end",
    } <= names
    assert all(c["status"] == "pass" for c in cells), log
    # ICE restart: new credentials on both sides, and the media moved to the node's new socket.
    restart = next(c for c in cells if c["scenario"] == "ice-restart")["evidence"]
    assert len(restart["restarts"]) == 2, restart  # a second restart works too
    for one in restart["restarts"]:
        for key in ("ufrag", "server_ufrag", "server_candidate"):
            assert one[key]["before"] and one[key]["after"] != one[key]["before"], restart
    media = next(c for c in cells if c["scenario"] == "media")["evidence"]
    assert media["codecs"]["a"]["video"] == "VP8" and media["codecs"]["b"]["video"] == "VP8"
    for sample in media["samples"]:
        assert sample["later"]["packets"] > sample["first"]["packets"], sample
    video = [s for s in media["samples"] if s["source"] == "camera"]
    assert all(s["later"]["width"] and s["later"]["height"] for s in video), video
    assert len(media["screenshots"]) == 2
    assert set(report["browsers"]) == {"chromium", "firefox", "firefox140"}
    assert cells[0]["browsers"]["a"]["engine"] == "chrome", cells[0]["browsers"]
    assert all(b["version"] for b in report["browsers"].values())
    # The SDP suite: every fixture, in a VP8 and an H264 room.
    fixtures = {p.stem for p in FIXTURES.glob("*.sdp")}
    assert {s["fixture"] for s in report["sdp"]} == fixtures
    assert len(report["sdp"]) == 2 * len(fixtures)
    assert all(s["status"] == "pass" for s in report["sdp"]), report["sdp"]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert "<link" not in html and "<script" not in html  # self-contained
    assert "By engine and version" in html and "140.12.0esr" in html
    assert (out / "node.log").stat().st_size > 0


@pytest.mark.timeout(300)
def test_browser_that_cannot_launch_fails_its_cells(tmp_path: Path) -> None:
    """A missing binary and one that exits at once: cells fail with the reason, run ends."""
    _need_root()
    crash = tmp_path / "crashing-browser"
    crash.write_text("#!/bin/sh\necho 'simulated crash at start' >&2\nexit 3\n")
    crash.chmod(0o755)
    config = tmp_path / "browsers.json"
    config.write_text(
        json.dumps(
            {
                "browsers": [
                    {"name": "missing", "engine": "chrome", "executable": "/nonexistent/chrome"},
                    {"name": "crashing", "engine": "firefox", "executable": str(crash)},
                    {
                        "name": "nosuchversion",
                        "engine": "firefox",
                        "package": "firefox-esr",
                        "version": "1.0-nonexistent",
                    },
                ]
            }
        )
    )
    out = tmp_path / "report"
    before = set(_namespaces())
    args = ["--browsers", str(config), "--pairs", "missing-chromium", "crashing-aiortc"]
    args += ["nosuchversion-aiortc"]
    args += ["--scenarios", "join-admit", "media", "--no-sdp", "--report-dir", str(out)]
    res = _compat(args, timeout=280)
    log = f"--- stdout\n{res.stdout[-4000:]}\n--- stderr\n{res.stderr[-4000:]}"
    assert res.returncode == 1, log
    report = json.loads((out / "report.json").read_text())
    by = {(c["pair"], c["scenario"]): c for c in report["cells"]}
    assert set(by) == {
        (p, s)
        for p in ("missing-chromium", "crashing-aiortc", "nosuchversion-aiortc")
        for s in ("join-admit", "media")
    }
    assert all(c["status"] == "fail" for c in by.values())
    assert "/nonexistent/chrome is not installed" in by[("missing-chromium", "media")]["error"]
    assert "crashing failed to launch" in by[("crashing-aiortc", "join-admit")]["error"]
    # A version Debian's archive does not have: its cells fail with apt's reason.
    err = by[("nosuchversion-aiortc", "media")]["error"]
    assert "cannot fetch firefox-esr 1.0-nonexistent" in err and "not found" in err, err
    assert "FAIL" in res.stdout and "FAILURES" in res.stdout
    # Nothing left behind: no new namespace of ours, no process of the fake browser.
    assert set(_namespaces()) <= before, _namespaces()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(crash) not in ps


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("compat-")]


def test_browser_config_and_pairs() -> None:
    specs = load_browsers(None)
    assert specs["chromium"].executable == "/usr/bin/chromium"
    assert specs["firefox"].launch_prefs()["media.peerconnection.ice.loopback"] is True
    assert "--allow-loopback-in-peer-connection" in specs["chromium"].launch_args()
    assert default_pairs(["chromium", "firefox"]) == [
        ("chromium", "firefox"),
        ("chromium", "chromium"),
        ("firefox", "firefox"),
        ("chromium", "aiortc"),
        ("firefox", "aiortc"),
    ]
    assert parse_pair("firefox-aiortc", set(specs)) == ("firefox", "aiortc")
    # The versions of compat/versions.json: each against the other engine's current browser.
    assert specs["firefox140"].package == "firefox-esr"
    assert specs["firefox140"].version.startswith("140.")
    assert specs["chromium150"].engine == "chrome"
    full = full_pairs(specs)
    assert full[:5] == default_pairs(["chromium", "firefox"])
    assert ("chromium", "firefox140") in full and ("chromium150", "firefox") in full
    assert len(full) == 7
    with pytest.raises(ValueError, match="bad pair"):
        parse_pair("safari-chromium", set(specs))


def test_bad_browser_config_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "b.json"
    for bad, why in (
        ({"browsers": [{"name": "x", "engine": "webkit", "executable": "/x"}]}, "engine"),
        ({"browsers": [{"name": "a-b", "engine": "chrome", "executable": "/x"}]}, "name"),
        ({"browsers": [{"name": "x", "engine": "chrome"}]}, "executable"),
        ({"nope": 1}, "expected"),
        ({"browsers": [{"name": "x", "engine": "chrome", "package": "opera"}]}, "package"),
        (
            {"browsers": [{"name": "x", "engine": "chrome", "package": "chromium", "version": 1}]},
            "package",
        ),
    ):
        cfg.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=why):
            load_browsers(cfg)
    cfg.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        load_browsers(cfg)


def test_every_fixture_cites_its_source() -> None:
    fixtures = sdp.load_fixtures(FIXTURES)
    names = {f.name for f in fixtures}
    assert {
        "safari-macos-sendrecv",
        "safari-ios-recv",
        "safari26-macos-sendrecv",
        "android-chrome63-recvonly",
    } <= names
    for f in fixtures:
        # A public file at a fixed commit, or an offer recorded here from a fetched browser.
        source = f.meta["source"]
        assert source.startswith("https://") or source.startswith("recorded by `compat run`")
        assert f.meta.get("browser"), f.name
        assert f.sdp.startswith("v=0\r\n") and "m=video" in f.sdp, f.name


def test_fixture_without_source_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "x.sdp"
    p.write_text("# browser: Somebrowser\n\nv=0\r\n")
    with pytest.raises(ValueError, match="source"):
        sdp.load_fixture(p)


def _answer_for(offer: str) -> str:
    """A correct answer to the Safari offer: VP8 + RTX, opus, offered extension ids."""
    o = sdp.parse(offer)
    lines = ["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1"]
    for m in o.media:
        pts = ["111"] if m.kind == "audio" else ["100", "101"]
        lines += [f"m={m.kind} 9 UDP/TLS/RTP/SAVPF {' '.join(pts)}", "c=IN IP4 0.0.0.0"]
        lines += [f"a=mid:{m.mid}", "a=recvonly", "a=rtcp-mux", "a=ice-ufrag:abcd"]
        lines += [
            "a=ice-pwd:abcdefghijklmnopqrstuv",
            "a=fingerprint:sha-256 AA:BB",
            "a=setup:active",
        ]
        if m.kind == "audio":
            lines += ["a=rtpmap:111 opus/48000/2", "a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid"]
        else:
            lines += ["a=rtpmap:100 VP8/90000", "a=rtpmap:101 rtx/90000", "a=fmtp:101 apt=100"]
    return "\r\n".join(lines) + "\r\n"


def test_sdp_checker_accepts_a_valid_answer_and_flags_broken_ones() -> None:
    offer = sdp.load_fixture(FIXTURES / "safari-macos-sendrecv.sdp").sdp
    good = _answer_for(offer)
    problems, picked = sdp.check_answer(offer, good, "VP8")
    assert problems == [], problems
    assert picked["1"]["codec"] == "VP8" and picked["0"]["codec"] == "OPUS"

    def problems_of(answer: str, room: str = "VP8") -> str:
        return " | ".join(sdp.check_answer(offer, answer, room)[0])

    # A room that asks for H264 must get it from Safari (mode 1 offered): VP8 is wrong there.
    assert "expected H264" in problems_of(good, "H264")
    assert "payload type 120 was not offered" in problems_of(
        good.replace("SAVPF 100 101", "SAVPF 120 101").replace("rtpmap:100", "rtpmap:120")
    )
    assert "a=setup:actpass" in problems_of(good.replace("a=setup:active", "a=setup:actpass"))
    assert "sdes:mid id 3" in problems_of(good.replace("a=extmap:9 urn", "a=extmap:3 urn"))
    assert "direction sendonly answers sendrecv" not in problems_of(good)
    assert "m-lines answer" in problems_of(good.split("m=video")[0])
    h264 = (
        good.replace("a=rtpmap:100 VP8/90000", "a=rtpmap:98 H264/90000\r\na=fmtp:98 "
                     "packetization-mode=0;profile-level-id=42e01f")
        .replace("SAVPF 100 101", "SAVPF 98")
        .replace("a=rtpmap:101 rtx/90000\r\na=fmtp:101 apt=100\r\n", "")
    )  # fmt: skip
    assert "packetization-mode 0" in problems_of(h264, "H264")
    # One id for two extensions (in an m-line, or across the BUNDLE), and extmap-allow-mixed
    # that the offer did not carry: the browser would misread the header extensions.
    video_ext = "a=rtpmap:100 VP8/90000\r\na=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
    toffset = "a=extmap:9 urn:ietf:params:rtp-hdrext:toffset\r\n"
    both = good.replace("a=rtpmap:100 VP8/90000\r\n", video_ext + toffset)
    assert "extension id 9 used for" in problems_of(both)
    assert problems_of(good.replace("a=rtpmap:100 VP8/90000\r\n", video_ext)) == ""
    assert "in another m-line of the BUNDLE" not in problems_of(both)
    other = good.replace("a=rtpmap:100 VP8/90000\r\n", "a=rtpmap:100 VP8/90000\r\n" + toffset)
    assert "id 9 is urn:ietf:params:rtp-hdrext:toffset here" in problems_of(other)
    mixed = good.replace("a=group:BUNDLE", "a=extmap-allow-mixed\r\na=group:BUNDLE")
    assert "extmap-allow-mixed in the answer" in problems_of(mixed)


def test_unknown_package_is_refused() -> None:
    with pytest.raises(packages.FetchError, match="unknown package"):
        packages.fetch("opera", "1.0")

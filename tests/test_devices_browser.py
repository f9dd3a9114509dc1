"""Devices in the real browser (Chromium, the demo page, consult.js), inside a namespace:

- the page publishes a stethoscope: processing (echo cancellation, noise suppression, auto
  gain) is off on the track, and the server's answer carries the fidelity Opus fmtp;
- a device added through the HTTP API sends VP8 over plain RTP (PyAV) as `exam-camera`: the
  page shows a tile labelled with that source and decodes it;
- the same device posts vital signs over HTTP: the page's vital-signs panel shows them, the
  ECG is drawn, and after a cut of the page's socket (records posted meanwhile) every record
  is there once, in order.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import pytest

from tests.netns import netns  # noqa: F401  (a fixture)
from tests.test_browser import (  # noqa: F401  (browser and call are fixtures)
    ROOT,
    Call,
    _cut_browser_sockets,
    _until,
    browser,
    call,
)

pytestmark = pytest.mark.timeout(150)

API = "http://127.0.0.1:8080/api/v1"
API_KEY = "dev-api-key"


async def api(c: Call, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    code = (
        "import json, sys, urllib.request as u\n"
        f"r = u.Request({API + path!r}, method={method!r}, data={json.dumps(body)!r}.encode(),\n"
        f"              headers={{'Authorization': 'Bearer {API_KEY}',"
        " 'Content-Type': 'application/json'})\n"
        "try:\n"
        "    print(u.urlopen(r, timeout=10).read().decode())\n"
        "except u.HTTPError as e:\n"
        "    print(e.read().decode())\n"
    )
    res = await asyncio.to_thread(c.ns.run, [sys.executable, "-c", code], timeout=30)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def ecg(start: int, t0: int) -> dict[str, Any]:
    samples = [round(((start + i) % 50) / 50, 3) for i in range(20)]
    return {"kind": "ecg", "rate": 500, "unit": "mV", "t": t0 + start * 2, "samples": samples}


async def test_device_tracks_and_vital_signs_in_the_browser(
    call: Call,  # noqa: F811
    browser: Any,  # noqa: F811
) -> None:
    page = await call.open_page(browser, call.token("doctor", "Dr Test"), "&publish=0")
    await _until(
        "the doctor to be admitted",
        lambda: call.page_true("window.consultation && consultation.state === 'admitted'"),
        20,
        call.diag,
    )

    # 1. the stethoscope, published from the page
    await page.evaluate("""async () => {
      const { openDeviceAudio } = await import('/client/consult.js');
      const track = await openDeviceAudio();
      window.__steth = consultation.publish(track, { source: 'stethoscope' });
    }""")
    await _until(
        "the stethoscope to be negotiated",
        lambda: call.page_true(
            "consultation.peerConnection?.signalingState === 'stable'"
            " && __steth.transceiver?.mid != null"
            " && consultation.peerConnection.remoteDescription?.sdp.includes('maxaveragebitrate')"
        ),
        20,
        call.diag,
    )
    settings = await page.evaluate("""() => {
      const s = __steth.track.getSettings();
      const sdp = consultation.peerConnection.remoteDescription.sdp;
      const mid = __steth.transceiver.mid;
      const section = sdp.split('m=').find((m) => m.includes(`a=mid:${mid}\\r\\n`));
      return { ec: s.echoCancellation, ns: s.noiseSuppression, agc: s.autoGainControl,
               hint: __steth.track.contentHint, fmtp: section.match(/a=fmtp:\\d+ (.*)/)[1] };
    }""")
    assert (settings["ec"], settings["ns"], settings["agc"]) == (False, False, False), settings
    assert settings["hint"] == "music"
    assert "maxaveragebitrate=128000" in settings["fmtp"] and "stereo=1" in settings["fmtp"]
    assert "usedtx=0" in settings["fmtp"]

    # 2. an RTP device's exam camera, labelled in the page
    sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=kit\r\nt=0 0\r\nm=video 5004 RTP/AVP 96\r\n"
    sdp += "a=rtpmap:96 VP8/90000\r\n"
    device = await api(call, "POST", f"/rooms/{call.room}/devices", {"name": "Kit", "sdp": sdp})
    assert device["media"][0]["source"] == "exam-camera", device
    port = device["media"][0]["port"]
    sender = call.ns.popen(
        [
            sys.executable, "-c",
            "import time\nfrom loadtest.rtp_sender import RtpSender\n"
            f"s = RtpSender('127.0.0.1', {port}, 'VP8', payload_type=96)\n"
            "s.start()\ntime.sleep(120)\n",
        ],
        cwd=ROOT,
    )  # fmt: skip
    try:
        await _until(
            "the exam camera tile",
            lambda: call.page_true(
                "[...document.querySelectorAll('figure[data-source=\"exam-camera\"] figcaption')]"
                ".some((f) => f.textContent.includes('Kit')"
                " && f.textContent.includes('exam-camera'))"
            ),
            30,
            call.diag,
        )
        await _until(
            "exam camera frames decoded",
            lambda: call.page_true(
                "(async () => { let n = 0; (await consultation.getStats()).forEach((r) => {"
                " if (r.type === 'inbound-rtp' && r.kind === 'video') n += r.framesDecoded || 0;"
                " }); return n > 10; })()"
            ),
            30,
            call.diag,
        )
    finally:
        sender.kill()

    # 3. vital signs over HTTP, a socket cut in the middle
    path = f"/rooms/{call.room}/devices/{device['id']}/telemetry"
    t0 = int(time.time() * 1000)
    readings = [
        {"kind": "spo2", "value": 97, "unit": "%", "t": t0},
        {"kind": "heart_rate", "value": 72, "unit": "bpm", "t": t0},
        {"kind": "blood_pressure", "systolic": 121, "diastolic": 79, "unit": "mm[Hg]", "t": t0},
        ecg(0, t0),
    ]
    assert (await api(call, "POST", path, {"seq": 1, "readings": readings}))["stored"] == 4
    await _until(
        "the vital-signs panel",
        lambda: call.page_true(
            "['97', '72', '121/79'].every((v) =>"
            " document.getElementById('vitals-values').textContent.includes(v))"
        ),
        20,
        call.diag,
    )
    bad = await api(call, "POST", path, {"seq": 2, "readings": [{"kind": "spo2", "value": 7}]})
    assert bad["error"] == "bad-telemetry"

    assert _cut_browser_sockets(call.ns) >= 1
    for n in range(1, 6):  # posted while the page's socket may be down
        await api(call, "POST", path, {"seq": 2 + n, "readings": [ecg(20 * n, t0)]})
    await _until(
        "every telemetry record once, in order",
        lambda: call.page_true(
            "consultation.telemetry.map((r) => r.seq).join() === '1,2,3,4,5,6,7,8,9'"
        ),
        30,
        call.diag,
    )
    assert await page.evaluate("consultation.state") == "admitted"
    assert not await call.page_true("document.querySelector('#log .error')"), await call.diag()
    assert not call.page_errors(), call.page_errors()

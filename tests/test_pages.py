"""The consultation pages (/consult/patient, /consult/doctor; docs/client.md, issue 18).

- the config switch: on in dev mode, off outside it unless `--pages`;
- the message catalogues: the same keys in French and English, and every key the pages use;
- consult.d.ts against consult.js: exported names, Consultation's members, event names
  (and `tsc --noEmit` on the declarations, with typescript from tests/pages);
- Debian's Chromium and Firefox ESR (puppeteer-core, compat/driver) drive both pages through a
  consultation: pre-call check, knock (sound event, title counter), admit, video and audio both
  ways, mute, chat, end (with its confirmation), reload after the end. Screenshots at 390x844
  and 1280x800 go to reports/pages/; DOM checks (no horizontal overflow at 390 px, controls
  disabled after the end, the end screen after a reload) and axe-core (no serious or critical
  violations). Each engine shows one page on a phone and the other on a desktop, and swaps
  in the other engine, so that both pages are seen at both sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from compat.browsers import DEFAULT_BROWSERS, BrowserSpec
from compat.driver import Driver, DriverError, driver_missing
from compat.synth import ToneTrack
from signaling.__main__ import demo_urls
from signaling.auth import encode_token
from signaling.client import ConsultClient
from signaling.config import add_run_arguments, config_from_args, random_secret

from .conftest import SECRET, Server, ServerFactory
from .test_browser import _cut_browser_sockets, _until
from .test_fallback_browser import (  # noqa: F401  (fixtures)
    BrowserCall,
    chromium_in,
    shaped_call,
)
from .test_fallback_shaped import WebcamVideo
from .test_stethoscope_browser import pulse, sound, wav  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "signaling" / "static"
REPORT = ROOT / "reports" / "pages"
NODE_MODULES = ROOT / "tests" / "pages" / "node_modules"  # npm ci --prefix tests/pages
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


# -- the config switch ----------------------------------------------------------------------
async def _status(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        await r.read()
        return r.status, r.headers.get("Content-Type", "")


async def test_pages_are_served_in_dev_mode_or_with_the_switch(make_server: ServerFactory) -> None:
    off = await make_server(dev=False)
    on = await make_server(dev=False, pages=True)
    dev = await make_server(dev=True)
    for role in ("patient", "doctor"):
        assert (await _status(f"{off.url}/consult/{role}"))[0] == 404
        for server in (on, dev):
            status, ctype = await _status(f"{server.url}/consult/{role}")
            assert status == 200 and ctype.startswith("text/html"), (server.config, status)
    assert (await _status(f"{on.url}/consult/nurse"))[0] == 404
    # Their modules, styles and catalogues are served like consult.js; raw .html only in dev.
    for name in ("consult-patient.js", "consult-ui.js", "consult-pages.css", "consult-fr.json"):
        assert (await _status(f"{off.url}/client/{name}"))[0] == 200, name
    assert (await _status(f"{on.url}/client/patient.html"))[0] == 404


def test_pages_switch_from_flag_and_env() -> None:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    secrets = [f"--api-key={random_secret()}", f"--token-secret={random_secret()}"]
    assert not config_from_args(parser.parse_args(secrets), env={}).pages
    assert config_from_args(parser.parse_args([*secrets, "--pages"]), env={}).pages
    assert config_from_args(parser.parse_args(secrets), env={"CONSULT_PAGES": "true"}).pages


async def test_demo_is_a_launcher_around_the_pages_in_dev_mode(make_server: ServerFactory) -> None:
    """`/demo` (dev mode): the launcher; the node's printed addresses open it and the pages with
    working tokens; a console address (one `token`) goes to the developer console."""
    dev = await make_server(dev=True)
    port = int(dev.url.rsplit(":", 1)[1])
    urls = demo_urls(dataclasses.replace(dev.config, host="127.0.0.1", port=port))
    assert set(urls) == {"demo", "doctor", "patient"}
    async with aiohttp.ClientSession() as http:
        async with http.get(urls["demo"]) as r:
            html = await r.text()
            assert r.status == 200 and "/consult/${role}" in html and "open-patient" in html
        for role in ("doctor", "patient"):
            assert urls[role].startswith(f"{dev.url}/consult/{role}?token=")
            async with http.get(urls[role]) as r:
                assert r.status == 200 and "consult-" in await r.text()
            token = parse_qs(urlsplit(urls["demo"]).query)[role][0]
            assert parse_qs(urlsplit(urls[role]).query)["token"] == [token]
        async with http.get(f"{dev.url}/demo?token=x&room=r", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/client/demo.html?token=x&room=r"
    assert (await _status(f"{dev.url}/client/demo.html"))[0] == 200
    assert (await _status(f"{dev.url}/client/launcher.html"))[0] == 200


# -- catalogues -----------------------------------------------------------------------------
def _js_list(name: str) -> list[str]:
    text = (STATIC / "consult-ui.js").read_text()
    m = re.search(rf"export const {name} = \[([^\]]*)\]", text)
    assert m, name
    return re.findall(r'"([^"]+)"', m.group(1))


def test_every_catalogue_key_in_both_languages_and_every_used_key_exists() -> None:
    en = json.loads((STATIC / "consult-en.json").read_text())
    fr = json.loads((STATIC / "consult-fr.json").read_text())
    assert set(en) == set(fr), set(en) ^ set(fr)
    assert all(isinstance(v, str) for v in [*en.values(), *fr.values()])
    used: set[str] = set()
    for page in ("patient.html", "doctor.html"):
        html = (STATIC / page).read_text()
        used |= set(re.findall(r'data-i18n="([^"]+)"', html))
        for attrs in re.findall(r'data-i18n-attr="([^"]+)"', html):
            used |= {pair.split(":", 1)[1] for pair in attrs.split(";")}
    sections = "|".join(sorted({k.split(".")[0] for k in en}))
    for module in ("consult-patient.js", "consult-doctor.js", "consult-ui.js"):
        text = (STATIC / module).read_text()
        used |= set(re.findall(r'\bt\("([^"$`]+)"', text))  # t("key")
        used |= set(re.findall(rf'"((?:{sections})\.[\w-]+)"', text))  # keys chosen by code
    # Keys made from codes: every code the pages can be given has its message.
    used |= {f"quality.{c}" for c in _js_list("QUALITY_CODES")}
    used |= {f"reason.{c}" for c in _js_list("MODE_REASONS")}
    used |= {f"end.{c}" for c in _js_list("END_REASONS")}
    used |= {"devices.stethoscope", "devices.exam-camera"}
    units = re.search(r"TELEMETRY_UNITS = Object\.freeze\(\{([^}]*)\}", _consult_js())
    assert units
    for kind, unit in re.findall(r'(\w+): "([^"]*)"', units.group(1)):
        used.add(f"unit.{unit}")
        if kind != "ecg":
            used.add(f"vitals.{kind}")
    assert len(used) > 50
    assert not used - set(en), sorted(used - set(en))
    assert not set(en) - used, f"unused keys: {sorted(set(en) - used)}"


# -- consult.d.ts ---------------------------------------------------------------------------
def _consult_js() -> str:
    return (STATIC / "consult.js").read_text()


def _dts() -> str:
    return (STATIC / "consult.d.ts").read_text()


def test_declarations_match_consult_js() -> None:
    js, dts = _consult_js(), _dts()
    exported = set(re.findall(r"^export (?:async )?(?:const|class|function) (\w+)", js, re.M))
    declared = set(re.findall(r"^export declare (?:const|class|function) (\w+)", dts, re.M))
    assert exported == declared, exported ^ declared

    body = js[js.index("export class Consultation") :]
    members = set(re.findall(r"^  (?:async |get )?([a-zA-Z]\w*)\(", body, re.M)) - {"constructor"}
    cls = dts[dts.index("export declare class Consultation") :]
    typed = set(re.findall(r"^  (?:readonly )?([a-zA-Z]\w*)[(<:]", cls, re.M))
    typed -= {"constructor", "addEventListener", "removeEventListener"}
    assert members == typed, (
        f"in consult.js only: {members - typed}, in .d.ts only: {typed - members}"
    )

    events = set(re.findall(r'_emit\("([a-z-]+)"', js))
    emap = dts[dts.index("interface ConsultationEventMap") :]
    emap = emap[: emap.index("\n}")]
    declared_events = set(re.findall(r'^  "([a-z-]+)":', emap, re.M))
    assert events == declared_events, events ^ declared_events


def test_declarations_compile_with_tsc(tmp_path: Path) -> None:
    tsc = NODE_MODULES / "typescript" / "bin" / "tsc"
    if not tsc.is_file() or shutil.which("node") is None:
        pytest.fail("typescript is not installed: run `npm ci --prefix tests/pages`")
    usage = tmp_path / "usage.ts"
    (tmp_path / "consult.d.ts").write_text(_dts())
    usage.write_text(
        'import { Consultation, CloseCode } from "./consult";\n'
        'const c = new Consultation({ token: "a.b.c" });\n'
        'c.addEventListener("mode", (e) => { const m: string = e.detail.mode; void m; });\n'
        'c.addEventListener("knock", (e) => {\n'
        "  const n: string = e.detail.participant.name; void n;\n"
        "});\n"
        "const ended: 4005 = CloseCode.ENDED; void ended;\n"
        'c.publish(null as unknown as MediaStreamTrack, { source: "stethoscope" });\n'
    )
    res = subprocess.run(
        [
            "node",
            str(tsc),
            "--noEmit",
            "--strict",
            "--lib",
            "es2022,dom",
            "--target",
            "es2022",
            "--moduleResolution",
            "node",
            str(usage),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr


# -- both pages in real browsers ------------------------------------------------------------
# Each engine: (patient's viewport, patient's language, doctor's viewport, doctor's language).
LAYOUTS = {
    "chromium": (PHONE, "fr", DESKTOP, "en"),
    "firefox": (DESKTOP, "en", PHONE, "fr"),
}

OVERFLOW_JS = "return document.documentElement.scrollWidth - window.innerWidth;"
VIDEO_JS = "return $('remote-video').videoWidth > 0;"
INBOUND_AUDIO_JS = """
let n = 0;
(await consultPage.consult.getStats()).forEach((r) => {
  if (r.type === 'inbound-rtp' && r.kind === 'audio') n += r.packetsReceived || 0; });
return n;"""
DEVICES_JS = """
const { openDeviceAudio } = await import('/client/consult.js');
const c = consultPage.consult;
await c.sendTelemetry([{kind: 'spo2', value: 97, unit: '%', t: Date.now()},
                       {kind: 'heart_rate', value: 72, unit: 'bpm', t: Date.now()}]);
const pub = c.publish(await openDeviceAudio(), {source: 'stethoscope'});
await pub.ready;
const exam = await navigator.mediaDevices.getUserMedia({video: {width: 320, height: 240}});
c.publish(exam.getVideoTracks()[0], {source: 'exam-camera'});"""
DISABLED_JS = """
return Object.fromEntries(IDS.map((id) => [id, $(id).disabled]));"""


@pytest.fixture
async def driver(monkeypatch: pytest.MonkeyPatch, pulse: str) -> AsyncIterator[Driver]:  # noqa: F811
    """The driver, its browsers with a sound server: headless Firefox runs no AudioContext
    (level meters, the knock's beep) without an audio output."""
    if why := driver_missing():
        pytest.fail(f"{why} (make compat-driver)")
    monkeypatch.setenv("PULSE_SERVER", pulse)
    d = Driver()
    await d.start(timeout=60)
    try:
        yield d
    finally:
        await d.close()


@pytest.fixture
async def pages_server(make_server: ServerFactory) -> Server:
    """A node outside dev mode with the pages switched on."""
    return await make_server(dev=False, pages=True)


class Run:
    """One engine's consultation: the driver, the pages opened, what to report on failure."""

    def __init__(self, driver: Driver, server: Server, name: str, room: str) -> None:
        self.driver = driver
        self.server = server
        self.name = name
        self.room = room
        self.browser = f"pages-{name}"
        self.pages: list[str] = []

    async def open(
        self, page: str, path: str, viewport: dict[str, int], browser: str | None = None
    ) -> None:
        await self.driver.call(
            "open",
            90,
            browser=browser or self.browser,
            page=page,
            url=self.server.url + path,
            viewport=viewport,
        )
        self.pages.append(page)
        await self.until("the page translated", page, "return window.consultPage?.language;")

    async def js(self, page: str, body: str, timeout: float = 60) -> Any:
        body = f"const $ = (id) => document.getElementById(id);\n{body}"
        return (await self.driver.call("eval", timeout, page=page, body=body))["value"]

    async def click(self, page: str, selector: str) -> None:
        await self.js(page, f"document.querySelector({json.dumps(selector)}).click();")

    async def diag(self) -> str:
        out = []
        for page in self.pages:
            try:
                state = await self.js(
                    page,
                    "return {view: consultPage.view, state: consultPage.consult?.state,"
                    " conn: consultPage.consult?.connectionState, title: document.title,"
                    " meter: {...$('mic-level')?.dataset},"
                    " remote: consultPage.consult?.remoteTracks.map((x) => x.source),"
                    " published: consultPage.consult?.publications.map((x) => x.source),"
                    " devices: $('devices')?.innerHTML.slice(0, 400)};",
                    10,
                )
                lines = (await self.driver.call("console", 10, page=page))["lines"]
            except Exception as exc:  # the page may be gone; the rest still helps
                state, lines = f"unavailable: {exc!r}", []
            out.append(f"--- {page}: {state}\n" + "\n".join(lines[-30:]))
        return "\n".join(out)

    async def until(self, what: str, page: str, body: str, within: float = 60) -> Any:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            value = await self.js(page, body)
            if value:
                return value
            await asyncio.sleep(0.5)
        raise AssertionError(
            f"{self.name}: timed out after {within:.0f}s: {what}\n{await self.diag()}"
        )

    async def screenshot(self, page: str, label: str) -> Path:
        try:
            png = (await self.driver.call("screenshot", 60, page=page))["png"]
        except DriverError:  # a background tab's capture can stall on a loaded machine: once more
            png = (await self.driver.call("screenshot", 120, page=page))["png"]
        REPORT.mkdir(parents=True, exist_ok=True)
        path = REPORT / f"{self.name}-{label}.png"
        path.write_bytes(base64.b64decode(png))
        return path

    async def axe(self, page: str) -> list[dict[str, Any]]:
        source = (NODE_MODULES / "axe-core" / "axe.min.js").read_text()
        body = (
            f"{source}\n;const res = await window.axe.run(document, "
            "{resultTypes: ['violations']});\n"
            "return res.violations.filter((v) => ['serious', 'critical'].includes(v.impact))"
            ".map((v) => ({id: v.id, impact: v.impact, help: v.help,"
            " nodes: v.nodes.slice(0, 4).map((n) => n.target.join(' '))}));"
        )
        result: list[dict[str, Any]] = await self.js(page, body, 120)
        return result


def _spec(name: str) -> BrowserSpec:
    spec = DEFAULT_BROWSERS[name]
    if why := spec.missing():
        pytest.fail(f"{why} (make test installs it)")
    # The level meters and the beep need a running AudioContext: a person's first click or key
    # starts it (consult-ui.js); the driver's clicks are not user gestures, so the policy is off.
    if spec.engine == "chrome":
        return BrowserSpec(
            spec.name,
            spec.engine,
            spec.executable,
            args=("--autoplay-policy=no-user-gesture-required",),
        )
    return BrowserSpec(
        spec.name, spec.engine, spec.executable, prefs={"media.autoplay.block-webaudio": False}
    )


@pytest.mark.timeout(420)
@pytest.mark.parametrize("name", ["chromium", "firefox"])
async def test_a_whole_consultation_on_both_pages(
    name: str, driver: Driver, pages_server: Server
) -> None:
    if not (NODE_MODULES / "axe-core" / "axe.min.js").is_file():
        pytest.fail("axe-core is not installed: run `npm ci --prefix tests/pages`")
    server = pages_server
    patient_view, patient_lang, doctor_view, doctor_lang = LAYOUTS[name]
    room = f"pages-{name}"
    doctor_token = server.token("doctor", room=room, sub="dr", name="Dr Martin")
    patient_token = encode_token(  # with the `telemetry` claim: the patient's kit sends vitals
        secret=SECRET,
        room=room,
        sub="pt",
        role="patient",
        name="Jeanne Dupont",
        ttl_s=600,
        claims={"telemetry": True},
    )
    run = Run(driver, server, name, room)
    # The doctor in a browser of their own: each page is its browser's front tab (Chromium's
    # screenshot of a background tab can wait forever), as for two people.
    await driver.launch(run.browser, _spec(name), timeout=90)
    try:
        await driver.launch(f"{run.browser}-doctor", _spec(name), timeout=90)
        await _consultation(
            run, patient_token, doctor_token, patient_view, patient_lang, doctor_view, doctor_lang
        )
    finally:
        await driver.call("close", 30, browser=f"{run.browser}-doctor")
        await driver.call("close", 30, browser=run.browser)


async def _consultation(
    run: Run,
    patient_token: str,
    doctor_token: str,
    patient_view: dict[str, int],
    patient_lang: str,
    doctor_view: dict[str, int],
    doctor_lang: str,
) -> None:
    p, d = "patient", "doctor"
    phone_pages = [x for x, v in ((p, patient_view), (d, doctor_view)) if v == PHONE]
    await run.open(
        d,
        f"/consult/doctor?token={doctor_token}&lang={doctor_lang}",
        doctor_view,
        f"{run.browser}-doctor",
    )
    await run.until("the doctor in the call view", d, "return consultPage.view === 'call';")
    assert await run.js(d, "return document.documentElement.lang;") == doctor_lang

    # Pre-call check: camera preview, microphone level, device lists, network test.
    await run.open(p, f"/consult/patient?token={patient_token}&lang={patient_lang}", patient_view)
    assert await run.js(p, "return document.documentElement.lang;") == patient_lang
    await run.until("the pre-call preview", p, "return $('preview').videoWidth > 0;")
    await run.until("the network test", p, "return $('net-check').dataset.state === 'good';")
    await run.until("the microphone level", p, "return Number($('mic-level').value) > 0;")
    devices = await run.js(
        p,
        "return [document.querySelectorAll('#camera-select option').length,"
        " document.querySelectorAll('#mic-select option').length];",
    )
    assert devices[0] >= 1 and devices[1] >= 1, devices
    await run.screenshot(p, f"patient-precall-{patient_view['width']}")

    # Knock: the doctor hears it (the sound event) and sees it in the title.
    await run.js(
        d,
        "window.__sounds = []; addEventListener('consult-sound',"
        " (e) => window.__sounds.push(e.detail.kind));",
    )
    await run.click(p, "#knock")
    await run.until("the waiting room", p, "return consultPage.view === 'waiting';")
    await run.until(
        "the position in the queue", p, "return $('waiting-position').textContent.includes('1');"
    )
    await run.until("the knock's sound", d, "return window.__sounds.includes('knock');")
    assert (await run.js(d, "return document.title;")).startswith("(1) ")
    await run.until(
        "the waiting time",
        d,
        "return document.querySelector('#knocks li .since').textContent.length > 0;",
    )
    await run.until(
        "the knock in the live region",
        d,
        "return $('knock-live').textContent.includes('Jeanne Dupont');",
    )
    await run.screenshot(p, f"patient-waiting-{patient_view['width']}")
    await run.screenshot(d, f"doctor-knock-{doctor_view['width']}")

    # Admit: video and audio both ways.
    await run.click(d, "#knocks button.admit")
    await run.until("the patient in the call", p, "return consultPage.view === 'call';")
    await run.until("the title without a count", d, "return !document.title.startsWith('(');")
    for page in (p, d):
        await run.until(f"video on the {page}'s page", page, VIDEO_JS, 90)
    for page in (p, d):
        first = await run.js(page, INBOUND_AUDIO_JS)
        await run.until(
            f"audio arriving on the {page}'s page",
            page,
            INBOUND_AUDIO_JS.replace("return n;", f"return n > {first} + 20;"),
        )
    for page in (p, d):
        await run.until(
            f"the {page}'s connection shown as good",
            page,
            "return $('quality').dataset.quality === 'good';",
        )
    await run.until(
        "the patient's link on the doctor's page",
        d,
        "return $('patient-quality').dataset.quality === 'good';",
    )

    # The patient's devices on the doctor's page: vital signs with units, a stethoscope tile
    # with its level meter and volume.
    await run.js(p, DEVICES_JS)
    await run.until("the vital signs on the doctor's page", d, "return $('vitals').textContent;")
    vitals = await run.js(
        d,
        "return [...$('vitals').children].map((x) => [x.dataset.kind,"
        " x.querySelector('dd').firstChild.textContent,"
        " x.querySelector('.unit').textContent]).sort();",
    )
    assert [v[:2] for v in vitals] == [["heart_rate", "72"], ["spo2", "97"]], vitals
    assert vitals[1][2] == "%" and vitals[0][2] in ("beats/min", "batt./min"), vitals
    await run.until(
        "the stethoscope's tile",
        d,
        "return !!document.querySelector('.device[data-source=stethoscope] meter')"
        " && !!document.querySelector('.device[data-source=stethoscope] input[type=range]');",
    )
    await run.until(
        "the stethoscope's level",
        d,
        "return Number(document.querySelector('.device[data-source=stethoscope] meter')"
        ".value) > 0;",
        60,
    )
    await run.until(
        "the exam camera's tile",
        d,
        "return document.querySelector('.device[data-source=exam-camera] video')?.videoWidth > 0;",
        60,
    )
    await run.click(d, ".device[data-source=exam-camera] button")
    side = await run.js(
        d,
        "return [$('devices').classList.contains('side-by-side'),"
        " document.querySelector('.device[data-source=exam-camera] button')"
        ".getAttribute('aria-pressed'), !!document.querySelector('#devices .webcam-copy video')];",
    )
    assert side == [True, "true", True], side
    await run.screenshot(d, f"doctor-devices-{doctor_view['width']}")

    # Mute: the microphone track stops, the button says so.
    await run.click(p, "#mute")
    muted = await run.js(
        p,
        "return [$('mute').getAttribute('aria-pressed'),"
        " consultPage.consult.publications.filter((x) => x.source === 'microphone')"
        ".every((x) => x.track.enabled === false)];",
    )
    assert muted == ["true", True], muted

    # Chat both ways.
    await run.js(p, "$('chat-text').value = 'bonjour docteur';")
    await run.click(p, "#chat-send")
    await run.until(
        "the patient's message on the doctor's page",
        d,
        "return $('chat-log').textContent.includes('bonjour docteur');",
    )
    await run.js(d, "$('chat-text').value = 'hello there';")
    await run.click(d, "#chat-send")
    await run.until(
        "the doctor's message on the patient's page",
        p,
        "return $('chat-log').textContent.includes('hello there');",
    )

    # The patient's mode as the doctor's page shows it (the node's `mode` message, docs/fallback.md;
    # the patient's own page on a really shaped link: test_the_patient_page_on_a_shaped_link...),
    # in this engine too; then back to video.
    consultation = run.server.hub.get(run.room)
    assert consultation is not None
    patient = next(x for x in consultation.admitted() if str(x.role.value) == "patient")
    for mode, reason, code in (
        ("audio-only", "loss", "audio-only"),
        ("video", "recovered", "good"),
    ):
        consultation.broadcast(
            {
                "type": "mode",
                "participant": patient.id,
                "direction": "uplink",
                "mode": mode,
                "reason": reason,
            }
        )
        await run.until(
            f"{code} on the patient's page", p, f"return $('quality').dataset.quality === '{code}';"
        )
        await run.until(
            f"{code} for the patient on the doctor's page",
            d,
            f"return $('patient-quality').dataset.quality === '{code}';",
        )
        if code == "audio-only":
            await run.screenshot(p, f"patient-audio-only-{patient_view['width']}")
    # The phone layout: one column, nothing wider than the screen.
    for page in phone_pages:
        assert await run.js(page, OVERFLOW_JS) <= 0, f"{page}: horizontal overflow at 390 px"
    await run.screenshot(p, f"patient-call-{patient_view['width']}")
    await run.screenshot(d, f"doctor-call-{doctor_view['width']}")
    for page in (p, d):
        violations = await run.axe(page)
        assert not violations, f"{run.name} {page}: {json.dumps(violations, indent=1)}"

    # End, with its confirmation: the patient sees the end screen, every control is off.
    await run.click(d, "#end-call")
    assert await run.js(d, "return $('confirm').open;")
    await run.click(d, "#confirm-no")
    assert await run.js(d, "return !$('confirm').open && consultPage.consult.state === 'admitted';")
    await run.click(d, "#end-call")
    await run.click(d, "#confirm-yes")
    await run.until("the end screen on the patient's page", p, "return consultPage.view === 'end';")
    await run.until("the end screen on the doctor's page", d, "return consultPage.view === 'end';")
    assert await run.js(p, "return consultPage.endReason;") == "ended"
    ids = ["mute", "camera-toggle", "leave", "chat-text", "chat-send"]
    assert all((await run.js(p, f"const IDS = {json.dumps(ids)};{DISABLED_JS}")).values())
    ids = ["mute", "camera-toggle", "end-call", "chat-text", "chat-send"]
    assert all((await run.js(d, f"const IDS = {json.dumps(ids)};{DISABLED_JS}")).values())
    await run.screenshot(p, f"patient-end-{patient_view['width']}")
    for page in phone_pages:
        assert await run.js(page, OVERFLOW_JS) <= 0, f"{page}: horizontal overflow at 390 px"
    assert not await run.axe(p)

    # A reload after the end says the consultation is over, and so does the node (4005) for a
    # page that remembers nothing.
    await run.driver.call("reload", 60, page=p)
    await run.until("the end screen after a reload", p, "return consultPage.view === 'end';")
    assert await run.js(p, "return consultPage.endReason;") == "over"
    await run.js(p, "localStorage.clear(); setTimeout(() => location.reload(), 10);")
    await asyncio.sleep(1)
    await run.until(
        "the pre-call check of a page that forgot",
        p,
        "return window.consultPage?.view === 'precall' && !$('knock').disabled;",
    )
    await run.click(p, "#knock")
    await run.until("the node's refusal shown as the end", p, "return consultPage.view === 'end';")
    assert await run.js(p, "return consultPage.endReason;") == "ended"

    # The other size of each page: the patient's pre-call and the doctor's end screen.
    other = DESKTOP if patient_view == PHONE else PHONE
    await run.open("patient-2", f"/consult/patient?token={patient_token}&lang=en", other)
    await run.until(
        "the end screen in a new tab", "patient-2", "return consultPage.view === 'end';"
    )
    await run.screenshot("patient-2", f"patient-end-{other['width']}")
    await run.driver.call("reload", 60, page=d)
    await run.until(
        "the doctor's end screen after a reload", d, "return consultPage.view === 'end';"
    )
    await run.screenshot(d, f"doctor-end-{doctor_view['width']}")
    errors = []
    for page in run.pages:
        lines = (await run.driver.call("console", 10, page=page, last=200))["lines"]
        errors += [f"{page}: {x}" for x in lines if x.startswith("pageerror")]
    assert not errors, errors


@pytest.mark.timeout(300)
async def test_a_denied_patient_is_told_in_words(driver: Driver, pages_server: Server) -> None:
    """Deny asks for a confirmation; the patient's page then says the doctor cannot see them,
    with every control off (Chromium only: the pages' code is the same in both engines)."""
    server = pages_server
    room = "pages-deny"
    run = Run(driver, server, "chromium-deny", room)
    doctor = server.token("doctor", room=room, sub="dr", name="Dr Martin")
    patient = server.token("patient", room=room, sub="pt", name="Paul Durand")
    run.browser = "pages-deny"
    await driver.launch(run.browser, _spec("chromium"), timeout=90)
    try:
        await run.open("d", f"/consult/doctor?token={doctor}&lang=fr", DESKTOP)
        await run.open("p", f"/consult/patient?token={patient}&lang=fr", PHONE)
        await run.until("the knock button", "p", "return !$('knock').disabled;")
        await run.click("p", "#knock")
        await run.until("the knock", "d", "return !!document.querySelector('#knocks .deny');")
        await run.click("d", "#knocks .deny")
        assert await run.js("d", "return $('confirm').open && $('confirm-text').textContent;")
        await run.click("d", "#confirm-yes")
        await run.until("the patient's end screen", "p", "return consultPage.view === 'end';")
        assert await run.js("p", "return consultPage.endReason;") == "denied"
        assert (await run.js("p", "return $('end-text').textContent;")).startswith("Le médecin")
        assert await run.js("d", "return [$('knocks').children.length, document.title];") == [
            0,
            "Consultation (médecin)",
        ]
        await run.screenshot("p", "patient-denied-390")
    finally:
        await driver.call("close", 30, browser=run.browser)


FOCUSED_JS = "const a = document.activeElement; return a.id || a.className;"


@pytest.mark.timeout(300)
async def test_the_doctor_page_by_keyboard(driver: Driver, pages_server: Server) -> None:
    """Tab reaches a knock's admit and deny and the call's end; Enter on admit admits
    (Chromium, keys through the driver's `press`)."""
    server = pages_server
    room = "pages-keys"
    run = Run(driver, server, "chromium-keys", room)
    doctor = server.token("doctor", room=room, sub="dr", name="Dr Martin")
    patient = server.token("patient", room=room, sub="pt", name="Paul Durand")
    # Each page the front tab of a browser of its own: keys go to the focused page.
    await driver.launch("pages-keys-p", _spec("chromium"), timeout=90)
    try:
        await driver.launch("pages-keys-d", _spec("chromium"), timeout=90)
        await run.open("p", f"/consult/patient?token={patient}&lang=en", PHONE, "pages-keys-p")
        await run.open("d", f"/consult/doctor?token={doctor}&lang=en", DESKTOP, "pages-keys-d")
        await run.until("the knock button", "p", "return !$('knock').disabled;")
        await run.click("p", "#knock")
        await run.until("the knock", "d", "return !!document.querySelector('#knocks .admit');")

        async def tab_to(what: str, limit: int = 40) -> list[str]:
            seen = []
            for _ in range(limit):
                await driver.call("press", 30, page="d", key="Tab")
                seen.append(await run.js("d", FOCUSED_JS))
                if what in seen[-1].split():
                    return seen
            raise AssertionError(f"Tab never reached {what}: {seen}")

        await run.js("d", "document.activeElement.blur();")
        order = await tab_to("deny")
        assert [x for x in order if x in ("primary admit", "deny")] == ["primary admit", "deny"]
        await run.js("d", "document.activeElement.blur();")
        await tab_to("admit")
        await driver.call("press", 30, page="d", key="Enter")
        await run.until("the patient admitted", "p", "return consultPage.view === 'call';")
        await run.until("the doctor's call", "d", "return consultPage.view === 'call';")
        await run.js("d", "document.activeElement.blur();")
        await tab_to("end-call")
    finally:
        await driver.call("close", 30, browser="pages-keys-d")
        await driver.call("close", 30, browser="pages-keys-p")


# -- the patient's page on a shaped link, and a cut socket ----------------------------------
QUALITY_JS = "document.getElementById('quality').dataset.quality"


class DriverPage:
    """A page of the compat driver with the few calls of a Playwright page the test uses
    (`page.keyboard.press` included)."""

    def __init__(self, driver: Driver, page: str) -> None:
        self.driver = driver
        self.page = page

    async def evaluate(self, expression: str) -> Any:
        # An expression, or a function (PAGE_STATE_JS) called as Playwright does.
        body = f"const v = ({expression});\nreturn typeof v === 'function' ? await v() : v;"
        return (await self.driver.call("eval", 30, page=self.page, body=body))["value"]

    @property
    def keyboard(self) -> DriverPage:
        return self

    async def press(self, key: str) -> None:
        await self.driver.call("press", 30, page=self.page, key=key)

    async def screenshot(self, path: str) -> None:
        png = (await self.driver.call("screenshot", 60, page=self.page))["png"]
        await asyncio.to_thread(Path(path).write_bytes, base64.b64decode(png))


@contextlib.asynccontextmanager
async def _driver_in(call: BrowserCall, folder: Path) -> AsyncIterator[Driver]:
    """The compat driver started inside the call's namespace (as `compat run` does), so the
    browsers it launches live there and reach the node through the shaped veth only."""
    node = shutil.which("node")
    if why := driver_missing():
        pytest.fail(f"{why} (make compat-driver)")
    assert node is not None
    bin_dir = folder / "netns-bin"
    bin_dir.mkdir()
    call.ns.wrapper(bin_dir / "node", node)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '')}")
        d = Driver()
        await d.start(timeout=60)
    try:
        yield d
    finally:
        await d.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["chromium", "firefox"])
async def test_the_patient_page_on_a_shaped_link_and_a_cut_socket(
    name: str,
    shaped_call: BrowserCall,  # noqa: F811
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Chromium, then Firefox ESR, as the patient in a network namespace behind a veth shaped by
    the kernel (tests/test_fallback_browser.py); the doctor an aiortc client on loopback. At
    150 kbit/s the node's fallback goes to audio-only and the page says "sound only" with its
    reason; the link cleared, it climbs back to good by itself. Then the page's socket is
    destroyed (`ss -K`): "reconnecting...", never an error, and the same call again. Firefox
    runs under the compat driver (puppeteer-core over WebDriver BiDi, no Playwright build of
    it), the driver itself in the namespace. Both knock with Enter and walk the call's controls
    with Tab; the keys that work those controls, and reduced motion, are checked in Chromium."""
    call = shaped_call
    async with contextlib.AsyncExitStack() as stack:
        doctor = call.doctor = ConsultClient(f"http://127.0.0.1:{call.port}")
        await doctor.connect(call.token("doctor"))
        await doctor.publish(WebcamVideo(), ToneTrack())
        origin = f"http://{call.link.host_ip}:{call.port}"
        url = f"{origin}/consult/patient?token={call.token('patient')}&lang=en"
        if name == "chromium":
            browser = await stack.enter_async_context(chromium_in(call, tmp_path))
            page = call.page = await browser.new_page(viewport=PHONE)
            page.on("console", lambda m: call.console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: call.console.append(f"pageerror: {e}"))
            await page.goto(url)
        else:
            # A sound server for Firefox's AudioContext (the pre-call microphone meter).
            monkeypatch.setenv("PULSE_SERVER", request.getfixturevalue("pulse"))
            driver = await stack.enter_async_context(_driver_in(call, tmp_path))
            spec = _spec("firefox")
            spec = dataclasses.replace(  # the page is served from the veth address: let it capture
                spec,
                prefs={**spec.prefs, "dom.securecontext.allowlist": call.link.host_ip},
            )
            await driver.launch("shaped-firefox", spec, timeout=90)
            stack.push_async_callback(driver.call, "close", 30, browser="shaped-firefox")
            await driver.call(
                "open", 90, browser="shaped-firefox", page="p", url=url, viewport=PHONE
            )
            page = call.page = DriverPage(driver, "p")
        await _shaped_patient(name, call, page)
        if name != "chromium":
            lines = (await driver.call("console", 10, page="p", last=200))["lines"]
            # Firefox reports the socket that `ss -K` cut as an error of the page; that cut is
            # the test's own doing, anything else would be the page's.
            cut = "was interrupted while the page was loading"
            errors = [x for x in lines if x.startswith("pageerror") and cut not in x]
            assert not errors, lines


async def _shaped_patient(name: str, call: BrowserCall, page: Any) -> None:
    doctor = call.doctor
    assert doctor is not None

    def shows(body: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return bool(await page.evaluate(body))

        return check

    await _until(
        "the knock button", shows("!document.getElementById('knock').disabled"), 60, call.diag
    )
    # By keyboard: the page puts the focus on "Join" once the check is done.
    assert await page.evaluate("document.activeElement.id") == "knock"
    await page.keyboard.press("Enter")
    await _until("the knock", lambda: _knocked(doctor), 30, call.diag)
    knock = await doctor.wait_for("knock")
    call.patient_id = knock["participant"]["id"]
    await doctor.admit(call.patient_id)
    await _until("the call shown as good", shows(f"{QUALITY_JS} === 'good'"), 90, call.diag)

    call.link.rate(150)
    await _until(
        "sound only on the patient's page",
        shows(f"{QUALITY_JS} === 'audio-only'"),
        60,
        call.diag,
    )
    text = await page.evaluate("document.getElementById('quality').textContent")
    reasons = json.loads((STATIC / "consult-en.json").read_text())
    assert "sound only" in text, text
    assert any(f"({v})" in text for k, v in reasons.items() if k.startswith("reason.")), text
    REPORT.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(REPORT / f"{name}-shaped-patient-audio-only-390.png"))

    call.link.rate(None)
    await _until(
        "the page back to video by itself", shows(f"{QUALITY_JS} === 'good'"), 90, call.diag
    )

    assert _cut_browser_sockets(call.ns, call.port) >= 1
    await _until(
        "reconnecting... shown",
        shows("(consultQualityShown.quality || []).includes('reconnecting')"),
        30,
        call.diag,
    )
    await _until(
        "the same call again",
        shows(
            "consultPage.consult.state === 'admitted' && consultPage.view === 'call'"
            f" && {QUALITY_JS} === 'good'"
        ),
        90,
        call.diag,
    )
    shown = await page.evaluate(
        "[document.getElementById('banner').hidden, document.getElementById('fatal').hidden]"
    )
    assert shown == [True, True], shown
    # Keyboard: Tab reaches every control of the call in reading order; Space and
    # Enter work them.
    await page.evaluate("document.activeElement.blur()")
    order = []
    for _ in range(20):
        await page.keyboard.press("Tab")
        order.append(
            await page.evaluate("document.activeElement.id || document.activeElement.className")
        )
    controls = ["mute", "camera-toggle", "leave", "chat-log", "chat-text", "chat-send"]
    assert [x for x in order if x in controls][: len(controls)] == controls, order
    if name != "chromium":
        # Firefox under WebDriver BiDi: Tab moves the focus as above, but a key pressed on a
        # focused button (Space, Enter) does not click it there, while a click does: the keys
        # that work the controls, and the media emulation below, are checked in Chromium.
        return
    await page.focus("#mute")
    await page.keyboard.press("Space")
    assert (
        await page.evaluate("document.getElementById('mute').getAttribute('aria-pressed')")
        == "true"
    )
    await page.keyboard.press("Enter")
    assert (
        await page.evaluate("document.getElementById('mute').getAttribute('aria-pressed')")
        == "false"
    )
    await page.focus("#chat-text")
    await page.keyboard.type("typed at the keyboard")
    await page.keyboard.press("Enter")

    async def chat_arrived() -> bool:
        return "typed at the keyboard" in json.dumps(doctor.messages)

    await _until("the chat typed at the keyboard", chat_arrived, 30, call.diag)

    # prefers-reduced-motion: the reconnecting banner's spinner stops turning.
    spin = "getComputedStyle(document.getElementById('banner'), '::before').animationName"
    assert await page.evaluate(spin) == "spin"
    await page.emulate_media(reduced_motion="reduce")
    assert await page.evaluate(spin) == "none"
    assert not [c for c in call.console if c.startswith("pageerror")], call.console


async def _knocked(doctor: ConsultClient) -> bool:
    return any(m.get("type") == "knock" for m in doctor.messages)

// The patient's page (/consult/patient?token=...&lang=fr): pre-call check, waiting room,
// call, end. docs/client.md, "The consultation pages".
import { Consultation } from "./consult.js";
import {
  $, el, t, announce, beep, bindChatForm, chooseLanguage, duration, endedBefore, levelMeter, linkSampler,
  loadLanguage, quality, rememberEnded, showQuality, tokenRoom,
} from "./consult-ui.js";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const room = token ? tokenRoom(token) : null;
const page = { view: "loading", consult: null }; // window.consultPage: for tests and the console
window.consultPage = page;

let stream = null; // the pre-call capture: preview, then what we publish
let stopMeter = () => {};
let waitingSince = null;
let consult = null;
const controls = ["mute", "camera-toggle", "leave", "chat-text", "chat-send"];

function show(view) {
  page.view = view;
  document.body.dataset.view = view;
  for (const id of ["precall", "waiting", "call", "end"]) $(id).hidden = id !== view;
}

function fail(text) {
  $("fatal").textContent = text;
  $("fatal").hidden = false;
}

// -- pre-call check --------------------------------------------------------------------------
async function openDevices() {
  const cam = $("camera-select").value;
  const mic = $("mic-select").value;
  for (const tr of stream?.getTracks() ?? []) tr.stop();
  stopMeter();
  stream = await navigator.mediaDevices.getUserMedia({
    video: cam ? { deviceId: { exact: cam } } : true,
    audio: mic ? { deviceId: { exact: mic } } : true,
  });
  for (const v of [$("preview"), $("waiting-preview"), $("self-view")]) {
    v.srcObject = stream;
    v.play?.().catch(() => {});
  }
  stopMeter = levelMeter(stream, $("mic-level"));
  await listDevices();
}

async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const using = Object.fromEntries(stream.getTracks().map((tr) => [tr.kind, tr.getSettings().deviceId]));
  for (const [kind, id] of [["videoinput", "camera-select"], ["audioinput", "mic-select"]]) {
    const select = $(id);
    const current = using[kind === "videoinput" ? "video" : "audio"];
    select.replaceChildren(...devices.filter((d) => d.kind === kind).map((d, i) =>
      el("option", { value: d.deviceId, selected: d.deviceId === current }, d.label || `${t(id === "camera-select" ? "precall.camera" : "precall.microphone")} ${i + 1}`)));
  }
}

async function networkCheck() {
  const out = $("net-check");
  out.textContent = t("precall.net_testing");
  const times = [];
  try {
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      const res = await fetch("/healthz", { cache: "no-store" });
      await res.text();
      times.push(performance.now() - t0);
    }
    const ms = Math.round(times.sort((a, b) => a - b)[1]);
    out.dataset.state = ms < 300 ? "good" : "weak";
    out.textContent = t(ms < 300 ? "precall.net_good" : "precall.net_weak", { ms });
  } catch {
    out.dataset.state = "failed";
    out.textContent = t("precall.net_failed");
  }
}

async function precall() {
  show("precall");
  networkCheck();
  try {
    await openDevices();
  } catch (e) {
    $("precall-error").textContent = t("error.camera");
    $("precall-error").hidden = false;
  }
  $("knock").disabled = false;
  $("knock").focus();
}

// -- the consultation ------------------------------------------------------------------------
function renderChat(m) {
  const mine = m.from === consult.me?.id;
  const line = el("div", { class: "msg" });
  line.append(el("span", { class: "who" }, mine ? t("chat.me") : m.name ?? ""), el("span", {}, m.text));
  $("chat-log").append(line);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
}

function updateQuality(link = {}) {
  if (!consult) return;
  showQuality($("quality"), quality(consult, consult.me?.id, link));
  $("banner").hidden = consult.state !== "reconnecting";
}

function end(reason) {
  stopMeter();
  for (const tr of stream?.getTracks() ?? []) tr.stop();
  for (const id of controls) $(id).disabled = true;
  for (const v of document.querySelectorAll("video, audio")) v.srcObject = null;
  $("banner").hidden = true;
  const key = ["denied", "kicked", "left", "over"].includes(reason) ? reason
    : reason === "ended" ? "ended" : "closed";
  if (key === "ended" || key === "over") rememberEnded(room, "ended");
  $("end-text").textContent = t(`end.${key}`);
  page.endReason = key;
  show("end");
  $("end-h").focus();
  updateQuality();
}

function knock() {
  $("knock").disabled = true;
  consult = new Consultation({ url: params.get("ws") ?? "/ws", token });
  page.consult = consult;
  window.consultation = consult;
  consult.addEventListener("waiting", ({ detail }) => {
    if (page.view !== "waiting") {
      waitingSince = Date.now();
      show("waiting");
    }
    $("waiting-position").textContent = detail.position ? t("waiting.position", { position: detail.position }) : "";
  });
  consult.addEventListener("admitted", () => {
    show("call");
    for (const tr of stream?.getTracks() ?? []) {
      consult.publish(tr, { source: tr.kind === "audio" ? "microphone" : "camera" });
    }
    $("self-view").srcObject = stream;
    $("self-view").play?.().catch(() => {});
    updateQuality();
  });
  // For the developer console only: a person sees states, never these (docs/client.md).
  consult.addEventListener("error", ({ detail }) => console.warn("consult.js error", detail.code, detail.message));
  consult.addEventListener("room", ({ detail }) => {
    $("chat-log").replaceChildren();
    for (const m of detail.chat) renderChat(m);
  });
  consult.addEventListener("chat", ({ detail }) => {
    renderChat(detail.message);
    if (detail.message.from !== consult.me?.id) beep("chat");
  });
  consult.addEventListener("track", ({ detail }) => {
    if (detail.kind === "video") {
      consult.attach(detail, $("remote-video"));
      $("remote-video").muted = true; // the sound comes from the audio element
      $("remote-video").dataset.mid = detail.mid;
      $("remote-placeholder").hidden = true;
    } else {
      const a = el("audio", { "data-mid": detail.mid });
      $("remote-audio").append(consult.attach(detail, a));
    }
  });
  consult.addEventListener("track-ended", ({ detail }) => {
    if ($("remote-video").dataset.mid === detail.mid) {
      $("remote-video").srcObject = null;
      $("remote-placeholder").hidden = false;
    }
    document.querySelector(`#remote-audio audio[data-mid="${CSS.escape(detail.mid)}"]`)?.remove();
  });
  consult.addEventListener("mode", ({ detail }) => {
    updateQuality();
    if (detail.participant === consult.me?.id) announce($("announcer"), $("quality").textContent.trim());
  });
  for (const ev of ["state", "connectionstatechange", "resumed"]) consult.addEventListener(ev, () => updateQuality());
  consult.addEventListener("reconnecting", () => updateQuality());
  consult.addEventListener("closed", ({ detail }) => {
    const reason = consult.state === "left" ? "left" : consult.state === "denied" ? "denied" : detail.reason;
    end(reason === "kicked" ? "kicked" : reason);
  });
  consult.connect().catch((e) => {
    if (["ended", "denied", "kicked"].includes(e?.code)) return; // `closed` shows it
    if (consult.state === "closed") return;
    $("precall-error").textContent = t("error.join", { code: e?.code ?? "?" });
    $("precall-error").hidden = false;
  });
  const sample = linkSampler(consult);
  setInterval(async () => {
    if (consult.state === "admitted") updateQuality(await sample());
  }, 4000);
}

function toggle(button, kind, onKey, offKey) {
  const tracks = stream?.getTracks().filter((tr) => tr.kind === kind) ?? [];
  const off = button.getAttribute("aria-pressed") !== "true";
  for (const tr of tracks) tr.enabled = !off;
  button.setAttribute("aria-pressed", String(off));
  button.textContent = t(off ? offKey : onKey);
}

setInterval(() => {
  if (page.view === "waiting" && waitingSince) {
    $("waiting-elapsed").textContent = t("waiting.elapsed", { time: duration((Date.now() - waitingSince) / 1000) });
  }
}, 1000);

$("knock").addEventListener("click", knock);
$("camera-select").addEventListener("change", () => openDevices().catch(() => {}));
$("mic-select").addEventListener("change", () => openDevices().catch(() => {}));
$("mute").addEventListener("click", (ev) => toggle(ev.currentTarget, "audio", "call.mute", "call.unmute"));
$("camera-toggle").addEventListener("click", (ev) => toggle(ev.currentTarget, "video", "call.camera_off", "call.camera_on"));
$("leave").addEventListener("click", () => consult?.leave());
bindChatForm(() => consult);

await loadLanguage(chooseLanguage(params));
page.language = document.documentElement.lang; // translated: ready
showQuality($("quality"), { code: "connecting", reason: null });
if (!token) {
  fail(t("error.no_token"));
} else if (endedBefore(room)) {
  for (const id of controls) $(id).disabled = true;
  end("over");
} else {
  precall();
}

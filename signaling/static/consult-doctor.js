// The doctor's page (/consult/doctor?token=...&lang=fr): knock list with sound and title
// counter, admit/deny, the call, device tracks, vital signs, the patient's link quality.
// docs/client.md, "The consultation pages".
import { Consultation, TELEMETRY_UNITS } from "./consult.js";
import {
  $, el, t, announce, audio, beep, bindChatForm, chooseLanguage, duration, endedBefore, levelMeter,
  linkSampler, loadLanguage, quality, rememberEnded, showQuality, tokenRoom,
} from "./consult-ui.js";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const room = token ? tokenRoom(token) : null;
const page = { view: "loading", consult: null, knockSince: new Map() };
window.consultPage = page;
const controls = ["mute", "camera-toggle", "end-call", "chat-text", "chat-send"];

let consult = null;
let stream = null;
const meters = new Map(); // mid -> stop function

function show(view) {
  page.view = view;
  document.body.dataset.view = view;
  $("call").hidden = view !== "call";
  $("end").hidden = view !== "end";
}

/** A confirmation in a <dialog>: resolves true on Confirm. */
function confirmDialog(text) {
  const dlg = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const done = (v) => { dlg.close(); $("confirm-yes").onclick = $("confirm-no").onclick = null; resolve(v); };
    $("confirm-yes").onclick = () => done(true);
    $("confirm-no").onclick = () => done(false);
    dlg.oncancel = () => resolve(false);
    dlg.showModal();
    $("confirm-no").focus();
  });
}

function nameOf(id) {
  return consult.participants.find((p) => p.id === id)?.name ?? consult.knocks.find((p) => p.id === id)?.name ?? "";
}

function patientId() {
  return consult.participants.find((p) => p.id !== consult.me?.id && p.role !== "doctor")?.id ?? null;
}

// -- knocks --------------------------------------------------------------------------------
function renderKnocks() {
  const knocks = consult.knocks;
  const ul = $("knocks");
  const seen = new Set();
  for (const p of knocks) {
    seen.add(p.id);
    if (!page.knockSince.has(p.id)) page.knockSince.set(p.id, Date.now());
    if (ul.querySelector(`li[data-id="${CSS.escape(p.id)}"]`)) continue;
    const li = el("li", { "data-id": p.id, class: "new" });
    const admit = el("button", { class: "primary admit", "aria-label": t("knocks.admit_label", { name: p.name }) }, t("knocks.admit"));
    const deny = el("button", { class: "deny", "aria-label": t("knocks.deny_label", { name: p.name }) }, t("knocks.deny"));
    admit.onclick = () => act(() => consult.admit(p.id));
    deny.onclick = async () => { if (await confirmDialog(t("confirm.deny", { name: p.name }))) act(() => consult.deny(p.id)); };
    li.append(el("span", { class: "name" }, p.name), el("span", { class: "since muted" }), admit, deny);
    ul.append(li);
  }
  for (const li of [...ul.children]) if (!seen.has(li.dataset.id)) li.remove();
  for (const id of [...page.knockSince.keys()]) if (!seen.has(id)) page.knockSince.delete(id);
  $("knocks-empty").hidden = knocks.length > 0;
  $("knocks-panel").classList.toggle("has-knocks", knocks.length > 0);
  $("knock-count").textContent = knocks.length ? `(${knocks.length})` : "";
  document.title = (knocks.length ? `(${knocks.length}) ` : "") + t("doctor.title");
  tickKnocks();
}

function tickKnocks() {
  for (const li of $("knocks").children) {
    const since = page.knockSince.get(li.dataset.id);
    if (since) li.querySelector(".since").textContent = t("knocks.waiting_for", { time: duration((Date.now() - since) / 1000) });
  }
}

function act(fn) {
  fn().catch((e) => announce($("announcer"), t("error.action", { code: e?.code ?? "?" })));
}

// -- remote tracks: the patient's camera on the stage, devices in their own tiles ---------------
function addTrack(detail) {
  if (detail.kind === "video" && detail.source !== "exam-camera") {
    consult.attach(detail, $("remote-video"));
    $("remote-video").muted = true;
    $("remote-video").dataset.mid = detail.mid;
    $("remote-placeholder").hidden = true;
    return;
  }
  if (detail.kind === "audio" && detail.source !== "stethoscope") {
    $("remote-audio").append(consult.attach(detail, el("audio", { "data-mid": detail.mid })));
    return;
  }
  const tile = el("div", { class: "device", "data-mid": detail.mid, "data-source": detail.source });
  tile.append(el("h3", {}, t(`devices.${detail.source}`)));
  if (detail.kind === "video") {
    const v = el("video", { muted: true, "aria-label": t(`devices.${detail.source}`) });
    const big = el("button", { "aria-pressed": "false" }, t("devices.enlarge"));
    big.onclick = () => {
      const on = $("devices").classList.toggle("side-by-side");
      big.setAttribute("aria-pressed", String(on));
      big.textContent = t(on ? "devices.shrink" : "devices.enlarge");
      if (on) addWebcamCopy(); else $("devices").querySelector(".webcam-copy")?.remove();
    };
    tile.append(consult.attach(detail, v), big);
  } else {
    const a = el("audio", { "data-mid": detail.mid });
    const mid = detail.mid.replace(/\W/g, "");
    const meter = el("meter", { id: `level-${mid}`, min: 0, max: 1, value: 0 });
    const vol = el("input", { type: "range", id: `volume-${mid}`, min: 0, max: 1, step: 0.05, value: 1 });
    vol.oninput = () => { a.volume = Number(vol.value); };
    tile.append(consult.attach(detail, a),
      el("label", { for: meter.id }, t("devices.level")), meter,
      el("label", { for: vol.id }, t("devices.volume")), vol);
    if (detail.warnings?.length) tile.append(el("p", { class: "error" }, t("devices.warning")));
    meters.set(detail.mid, levelMeter(detail.stream, meter));
  }
  $("devices").append(tile);
  $("devices-none").hidden = true;
}

function addWebcamCopy() {
  const src = $("remote-video").srcObject;
  if (!src) return;
  const tile = el("div", { class: "device webcam-copy" });
  const v = el("video", { muted: true, autoplay: true, playsInline: true, "aria-label": t("call.remote_video_doctor") });
  v.srcObject = src;
  tile.append(el("h3", {}, t("call.remote_video_doctor")), v);
  $("devices").prepend(tile);
  v.play?.().catch(() => {});
}

function removeTrack(detail) {
  if ($("remote-video").dataset.mid === detail.mid) {
    $("remote-video").srcObject = null;
    $("remote-placeholder").hidden = false;
  }
  meters.get(detail.mid)?.();
  meters.delete(detail.mid);
  for (const n of document.querySelectorAll(`[data-mid="${CSS.escape(detail.mid)}"]`)) if (n.id !== "remote-video") n.remove();
  $("devices-none").hidden = $("devices").querySelector(".device:not(.webcam-copy)") != null;
}

// -- vital signs ----------------------------------------------------------------------------
function renderVitals() {
  const dl = $("vitals");
  dl.replaceChildren();
  for (const kinds of Object.values(consult.vitals ?? {})) {
    for (const [kind, r] of Object.entries(kinds)) {
      if (kind === "ecg") continue;
      const value = kind === "blood_pressure" ? `${r.systolic}/${r.diastolic}` : `${r.value}`;
      const unit = r.unit ?? TELEMETRY_UNITS[kind] ?? "";
      const box = el("div", { "data-kind": kind });
      const dd = el("dd", {}, value);
      dd.append(el("span", { class: "unit" }, t(`unit.${unit}`)));
      if (r.t) dd.append(el("span", { class: "at" }, t("vitals.at", { time: new Date(r.t).toLocaleTimeString() })));
      box.append(el("dt", {}, t(`vitals.${kind}`)), dd);
      dl.append(box);
    }
  }
  $("vitals-none").hidden = dl.childElementCount > 0;
}

// -- state -------------------------------------------------------------------------------------
function updateQuality(link = {}) {
  showQuality($("quality"), quality(consult, consult.me?.id, link));
  const pid = patientId();
  showQuality($("patient-quality"), pid ? quality(consult, pid, link) : { code: "absent", reason: null });
  $("banner").hidden = consult.state !== "reconnecting";
}

function renderChat(m) {
  const mine = m.from === consult.me?.id;
  const line = el("div", { class: "msg" });
  line.append(el("span", { class: "who" }, mine ? t("chat.me") : m.name ?? ""), el("span", {}, m.text));
  $("chat-log").append(line);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
}

function end(reason) {
  for (const tr of stream?.getTracks() ?? []) tr.stop();
  for (const stop of meters.values()) stop();
  for (const id of controls) $(id).disabled = true;
  for (const b of document.querySelectorAll("#knocks button, #devices button")) b.disabled = true;
  for (const v of document.querySelectorAll("video, audio")) v.srcObject = null;
  const key = reason === "ended" ? "ended_doctor" : ["left", "kicked", "over"].includes(reason) ? reason : "closed";
  if (reason === "ended" || reason === "over") rememberEnded(room, "ended");
  $("end-text").textContent = t(`end.${key}`);
  page.endReason = key;
  document.title = t("doctor.title");
  show("end");
  $("end-h").focus();
  if (consult) updateQuality();
}

async function start() {
  consult = new Consultation({ url: params.get("ws") ?? "/ws", token });
  page.consult = consult;
  window.consultation = consult;
  consult.addEventListener("admitted", async () => {
    show("call");
    updateQuality();
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
      for (const tr of stream.getTracks()) consult.publish(tr, { source: tr.kind === "audio" ? "microphone" : "camera" });
      $("self-view").srcObject = stream;
      $("self-view").play?.().catch(() => {});
    } catch {
      announce($("announcer"), t("error.camera"));
    }
  });
  consult.addEventListener("knock", ({ detail }) => {
    beep("knock");
    announce($("knock-live"), t("knocks.announce", { name: detail.participant?.name ?? "" }));
  });
  consult.addEventListener("knocks", renderKnocks);
  // For the developer console only: a person sees states, never these (docs/client.md).
  consult.addEventListener("error", ({ detail }) => console.warn("consult.js error", detail.code, detail.message));
  consult.addEventListener("room", ({ detail }) => {
    $("chat-log").replaceChildren();
    for (const m of detail.chat) renderChat(m);
    renderKnocks();
    renderVitals();
    updateQuality();
  });
  consult.addEventListener("chat", ({ detail }) => {
    renderChat(detail.message);
    if (detail.message.from !== consult.me?.id) beep("chat");
  });
  consult.addEventListener("track", ({ detail }) => addTrack(detail));
  consult.addEventListener("track-ended", ({ detail }) => removeTrack(detail));
  consult.addEventListener("telemetry", ({ detail }) => { if (detail.record?.kind !== "ecg") renderVitals(); });
  consult.addEventListener("mode", ({ detail }) => {
    updateQuality();
    const q = detail.participant === consult.me?.id ? $("quality") : $("patient-quality");
    announce($("announcer"), `${q.querySelector(".q-label").textContent}: ${q.querySelector(".q-text").textContent}`);
  });
  for (const ev of ["state", "connectionstatechange", "resumed", "reconnecting", "participant-joined", "participant-left"]) {
    consult.addEventListener(ev, () => updateQuality());
  }
  consult.addEventListener("resumed", () => renderVitals()); // telemetry history after a reconnect
  consult.addEventListener("closed", ({ detail }) => end(consult.state === "left" ? "left" : detail.reason));
  consult.connect().catch((e) => {
    if (consult.state === "closed" || consult.state === "ended") return;
    $("fatal").textContent = t("error.join", { code: e?.code ?? "?" });
    $("fatal").hidden = false;
  });
  const sample = linkSampler(consult);
  setInterval(async () => { if (consult.state === "admitted") updateQuality(await sample()); }, 4000);
}

function toggle(button, kind, onKey, offKey) {
  const off = button.getAttribute("aria-pressed") !== "true";
  for (const tr of stream?.getTracks().filter((x) => x.kind === kind) ?? []) tr.enabled = !off;
  button.setAttribute("aria-pressed", String(off));
  button.textContent = t(off ? offKey : onKey);
}

setInterval(tickKnocks, 1000);
// Browsers start audio on a first click or key only: until then, offer the knock sound.
function offerSound() {
  const ctx = audio();
  $("sound-on").hidden = !ctx || ctx.state === "running";
}
$("sound-on").addEventListener("click", () => { audio()?.resume().then(offerSound, offerSound); });
audio()?.addEventListener("statechange", offerSound);
setTimeout(offerSound, 500);
$("mute").addEventListener("click", (ev) => toggle(ev.currentTarget, "audio", "call.mute", "call.unmute"));
$("camera-toggle").addEventListener("click", (ev) => toggle(ev.currentTarget, "video", "call.camera_off", "call.camera_on"));
$("end-call").addEventListener("click", async () => {
  if (await confirmDialog(t("confirm.end"))) act(() => consult.end());
});
bindChatForm(() => consult);

await loadLanguage(chooseLanguage(params));
page.language = document.documentElement.lang; // translated: ready
showQuality($("quality"), { code: "connecting", reason: null });
showQuality($("patient-quality"), { code: "absent", reason: null });
if (!token) {
  $("fatal").textContent = t("error.no_token");
  $("fatal").hidden = false;
} else if (endedBefore(room)) {
  for (const id of controls) $(id).disabled = true;
  end("over");
} else {
  start();
}

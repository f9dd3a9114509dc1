// consult-ui.js: what the two consultation pages share (docs/client.md, "The consultation
// pages"): the message catalogue, the language, the token's room, level meters, the knock
// sound, the connection indicator, the end state kept across reloads.
// Plain ES module, no build step; every visible string comes from consult-<lang>.json.

export const LANGUAGES = ["fr", "en"];
export const QUALITY_CODES = ["absent", "connecting", "good", "weak", "audio-only", "chat-only", "reconnecting", "offline"];
export const MODE_REASONS = ["loss", "bandwidth", "rtt", "recovered", "resync"];
export const END_REASONS = ["ended", "ended_doctor", "denied", "kicked", "left", "closed", "over"];

let catalogue = {};
let language = "en";

/** The language: `?lang=` if known, else the browser's first known one, else English. */
export function chooseLanguage(params = new URLSearchParams(location.search), langs = navigator.languages) {
  const asked = (params.get("lang") || "").toLowerCase().slice(0, 2);
  if (LANGUAGES.includes(asked)) return asked;
  for (const l of langs ?? [navigator.language]) {
    const code = String(l).toLowerCase().slice(0, 2);
    if (LANGUAGES.includes(code)) return code;
  }
  return "en";
}

/** Load the catalogue of `lang` and translate the document (data-i18n, data-i18n-attr). */
export async function loadLanguage(lang) {
  const res = await fetch(new URL(`consult-${lang}.json`, import.meta.url));
  catalogue = await res.json();
  language = lang;
  document.documentElement.lang = lang;
  translate(document);
  return lang;
}

export function lang() { return language; }

/** The message of `key` with `{name}` placeholders filled; the key itself when missing. */
export function t(key, vars = {}) {
  const text = catalogue[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, k) => (vars[k] ?? ""));
}

/** `data-i18n="key"` sets the text; `data-i18n-attr="aria-label:key;title:key"` attributes. */
export function translate(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-attr]")) {
    for (const pair of el.dataset.i18nAttr.split(";")) {
      const [attr, key] = pair.split(":");
      if (attr && key) el.setAttribute(attr.trim(), t(key.trim()));
    }
  }
}

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, text = null) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-") || k.startsWith("aria-") || k === "role" || k === "for") e.setAttribute(k, v);
    else e[k] = v;
  }
  if (text != null) e.textContent = text;
  return e;
}

/** 65 -> "1:05" */
export function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/** The `room` claim of a participant token (not verified here: the node does that). */
export function tokenRoom(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return typeof claims.room === "string" ? claims.room : null;
  } catch {
    return null;
  }
}

// -- the end of a consultation, remembered per room so that a reload says it is over --------
const ENDED_KEY = "consult-ended:";
export function rememberEnded(room, reason) {
  if (!room) return;
  try { localStorage.setItem(ENDED_KEY + room, reason); } catch { /* storage off: the node still refuses (4005) */ }
}
export function endedBefore(room) {
  if (!room) return null;
  try { return localStorage.getItem(ENDED_KEY + room); } catch { return null; }
}

// -- audio: one context per page, level meters, the knock sound ------------------------------
let audioContext = null;
export function audio() {
  if (!audioContext) {
    const Ctx = globalThis.AudioContext ?? globalThis.webkitAudioContext;
    if (!Ctx) return null;
    audioContext = new Ctx();
  }
  if (audioContext.state === "suspended") audioContext.resume().catch(() => {});
  return audioContext;
}
// The first user gesture lets the context run (autoplay policy).
addEventListener("pointerdown", () => audio(), { once: true });
addEventListener("keydown", () => audio(), { once: true });

/**
 * A level meter on a stream's audio: sets `meter.value` (0..1) a few times a second.
 * Returns a stop function.
 */
export function levelMeter(stream, meter) {
  const ctx = audio();
  if (!ctx || !stream.getAudioTracks().length) return () => {};
  const src = ctx.createMediaStreamSource(stream);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  src.connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    const rms = Math.sqrt(sum / buf.length);
    meter.value = Math.min(1, rms * 4);
    meter.dataset.level = meter.value.toFixed(3);
    meter.dataset.audio = ctx.state;
  }, 150);
  return () => { clearInterval(timer); try { src.disconnect(); } catch { /* gone */ } };
}

/**
 * A short two-tone beep (WebAudio); dispatches `consult-sound` {kind} on window, so that a
 * test or the platform can observe it, and counts it in `window.consultSounds`.
 */
export function beep(kind = "knock") {
  const ctx = audio();
  if (ctx) {
    const t0 = ctx.currentTime;
    for (const [i, f] of [880, 660].entries()) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.frequency.value = f;
      gain.gain.setValueAtTime(0.0001, t0 + i * 0.18);
      gain.gain.exponentialRampToValueAtTime(0.2, t0 + i * 0.18 + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t0 + i * 0.18 + 0.16);
      osc.connect(gain).connect(ctx.destination);
      osc.start(t0 + i * 0.18);
      osc.stop(t0 + i * 0.18 + 0.17);
    }
  }
  globalThis.consultSounds = [...(globalThis.consultSounds ?? []), kind];
  dispatchEvent(new CustomEvent("consult-sound", { detail: { kind } }));
}

// -- connection indicator ------------------------------------------------------------------
const MODE_RANK = { video: 0, "audio-only": 1, "chat-only": 2 };

/** The worst bandwidth mode of a participant (uplink or downlink) and its reason. */
export function worstMode(consult, participant) {
  let worst = { mode: "video", reason: null };
  for (const m of consult.modes) {
    if (m.participant !== participant) continue;
    if ((MODE_RANK[m.mode] ?? 0) > (MODE_RANK[worst.mode] ?? 0)) worst = { mode: m.mode, reason: m.reason };
  }
  return worst;
}

/**
 * {code, reason}: code in QUALITY_CODES, reason in MODE_REASONS or null. From the client's
 * state, its media connection, the participant's modes and `link` ({loss, rtt} from getStats).
 */
export function quality(consult, participant, link = {}) {
  const state = consult.state;
  if (state === "reconnecting") return { code: "reconnecting", reason: null };
  if (["denied", "ended", "left", "closed"].includes(state)) return { code: "offline", reason: null };
  if (state === "waiting") return { code: "good", reason: null }; // the socket is up: no media yet
  if (state !== "admitted") return { code: "connecting", reason: null };
  const { mode, reason } = worstMode(consult, participant);
  if (mode === "chat-only") return { code: "chat-only", reason };
  if (mode === "audio-only") return { code: "audio-only", reason };
  const conn = consult.connectionState;
  if (conn === "disconnected" || conn === "failed") return { code: "reconnecting", reason: null };
  if (conn !== "connected") return { code: "connecting", reason: null };
  if ((link.loss ?? 0) > 0.03) return { code: "weak", reason: "loss" };
  if ((link.rtt ?? 0) > 0.4) return { code: "weak", reason: "rtt" };
  return { code: "good", reason: null };
}

/** Packet loss (0..1, since the last call) and round-trip time (s) of the media link. */
export function linkSampler(consult) {
  let last = { lost: 0, received: 0 };
  return async () => {
    let lost = 0, received = 0, rtt = null;
    try {
      const report = await consult.getStats();
      report.forEach((r) => {
        if (r.type === "inbound-rtp") { lost += r.packetsLost ?? 0; received += r.packetsReceived ?? 0; }
        if (r.type === "candidate-pair" && r.nominated && typeof r.currentRoundTripTime === "number") rtt = r.currentRoundTripTime;
      });
    } catch { return {}; }
    const dl = lost - last.lost, dr = received - last.received;
    last = { lost, received };
    return { loss: dl + dr > 0 ? Math.max(0, dl) / (dl + dr) : 0, rtt };
  };
}

/** Show a quality in a `.quality` element: data-quality for the colour, words for people. */
export function showQuality(elm, q) {
  if (elm.dataset.quality !== q.code) {
    // What was shown, in order, per indicator (window.consultQualityShown): tests and support.
    const shown = (globalThis.consultQualityShown ??= {});
    (shown[elm.id] ??= []).push(q.code);
  }
  elm.dataset.quality = q.code;
  const why = q.reason && MODE_REASONS.includes(q.reason) ? t(`reason.${q.reason}`) : "";
  elm.querySelector(".q-text").textContent = t(`quality.${q.code}`) + (why ? ` (${why})` : "");
}

/** Say something to screen readers (an aria-live region). */
export function announce(region, text) {
  region.textContent = "";
  setTimeout(() => { region.textContent = text; }, 50);
}

/** The page's chat form (#chat-form, #chat-text): send through the current consultation. */
export function bindChatForm(current) {
  $("chat-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const consult = current();
    const text = $("chat-text").value;
    if (!text.trim() || !consult) return;
    consult.sendChat(text).then(() => { $("chat-text").value = ""; },
      (e) => announce($("announcer"), t("error.action", { code: e?.code ?? "?" })));
  });
}

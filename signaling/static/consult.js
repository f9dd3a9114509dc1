// consult.js: browser client of the consultation server (signaling protocol v1).
// An ES module with no build step: `import { Consultation } from "/client/consult.js"`.
// Wire contract: docs/protocol.md. Embedding guide: docs/client.md.
//
// One WebSocket (signaling) and one RTCPeerConnection (media, max-bundle) per consultation.
// The client is the POLITE peer of perfect negotiation: when a server offer arrives while it
// has an offer of its own out, it rolls back and answers; the server answers a crossing client
// offer with error `glare`, after which the client just waits (negotiationneeded re-fires).
// A dropped WebSocket is resumed with the `resume` token from `joined`, with backoff.

export const PROTOCOL_VERSION = 1;

/** Track sources and the kind of track each carries. */
export const SOURCES = Object.freeze({
  camera: "video",
  microphone: "audio",
  stethoscope: "audio",
  "exam-camera": "video",
  screen: "video",
});

// -- devices (docs/devices.md) -------------------------------------------------------------
/**
 * getUserMedia audio constraints for a medical device (digital stethoscope): no echo
 * cancellation, noise suppression or auto gain (they treat heart sounds as noise), 48 kHz,
 * two channels where the device has them. `publish(track, {source: "stethoscope"})` also
 * switches them off on a track opened without them, re-opening the device when the browser
 * keeps them on (`publication.ready`).
 */
export const DEVICE_AUDIO_CONSTRAINTS = Object.freeze({
  echoCancellation: false,
  noiseSuppression: false,
  autoGainControl: false,
  sampleRate: 48000,
  channelCount: { ideal: 2 },
});

/** Open a stethoscope (an audio input device) with DEVICE_AUDIO_CONSTRAINTS. */
export async function openDeviceAudio(deviceId) {
  const audio = { ...DEVICE_AUDIO_CONSTRAINTS, ...(deviceId ? { deviceId: { exact: deviceId } } : {}) };
  const stream = await navigator.mediaDevices.getUserMedia({ audio, video: false });
  return stream.getAudioTracks()[0];
}

/** Telemetry kinds and their units (signaling/telemetry.py). */
export const TELEMETRY_UNITS = Object.freeze({
  spo2: "%", heart_rate: "bpm", temperature: "Cel", respiratory_rate: "/min",
  blood_pressure: "mm[Hg]", ecg: "mV",
});
const DEVICE_AUDIO_SOURCES = new Set(["stethoscope"]);
const PROCESSING = ["echoCancellation", "noiseSuppression", "autoGainControl"];
/** Speech processing a track's settings report on (what is not reported is not assumed). */
function processingOn(track) {
  const s = track.getSettings?.() ?? {};
  return PROCESSING.filter((k) => s[k] === true);
}
/** What an audio capture does, reported to the server with the publication (issue 19). */
function captureSettings(track) {
  const s = track.getSettings?.() ?? {};
  const out = {};
  for (const k of PROCESSING) if (typeof s[k] === "boolean") out[k] = s[k];
  for (const k of ["channelCount", "sampleRate"]) if (Number.isInteger(s[k])) out[k] = s[k];
  return out;
}
// -- end devices --------------------------------------------------------------------------

/** Close codes of the server (docs/protocol.md). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  SHUTDOWN: 1001,
  BAD_TOKEN: 4001,
  PROTOCOL: 4002,
  DENIED: 4003,
  KICKED: 4004,
  ENDED: 4005,
  REPLACED: 4006,
  ROOM_UNAVAILABLE: 4007,
  TIMEOUT: 4008,
  REDIRECT: 4011, // the room is on another node of the fleet: the `redirect` message says where
});
const MAX_REDIRECTS = 3;
const NODE_CONNECT_TIMEOUT_MS = 5000;

// Closes after which resuming makes no sense: the participant is gone or never was.
const FINAL_CLOSES = new Set([
  CloseCode.NORMAL, CloseCode.BAD_TOKEN, CloseCode.PROTOCOL, CloseCode.DENIED,
  CloseCode.KICKED, CloseCode.ENDED, CloseCode.REPLACED, CloseCode.ROOM_UNAVAILABLE,
]);
const CLOSE_REASONS = {
  [CloseCode.BAD_TOKEN]: "bad-token",
  [CloseCode.PROTOCOL]: "protocol",
  [CloseCode.DENIED]: "denied",
  [CloseCode.KICKED]: "kicked",
  [CloseCode.ENDED]: "ended",
  [CloseCode.REPLACED]: "replaced",
  [CloseCode.ROOM_UNAVAILABLE]: "room-unavailable",
  [CloseCode.TIMEOUT]: "timeout",
  [CloseCode.SHUTDOWN]: "shutdown",
};

const MAX_CHAT_CHARS = 4000;
const PING_INTERVAL_MS = 15000;
const PING_TIMEOUT_MS = 10000;
const REQUEST_TIMEOUT_MS = 15000;
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000];
const GLARE_HOLD_MS = 1000;
const FIRST_OFFER_WAIT_MS = 3000;
const MEDIA_RESTART_MS = 8000; // disconnected this long: a fresh peer connection (issue 5)
const MAX_RECONNECT_ATTEMPTS = 40; // about five minutes: longer than any resume grace period

/** An error from the server (`{type: "error", code, message, ref}`) or from the client. */
export class ConsultError extends Error {
  constructor(code, message, ref = null) {
    super(message || code);
    this.name = "ConsultError";
    this.code = code;
    this.ref = ref;
  }
}

// A ConsultError's code, or a fallback for DOMExceptions (numeric codes) and the like.
function codeOf(err, fallback) {
  return typeof err?.code === "string" && err.code ? err.code : fallback;
}

/** devices: the label of a publication in `offer.tracks` / `publish.tracks`. */
function trackLabel(pub) {
  const label = pub.channels === 2 ? { source: pub.source, channels: 2 } : { source: pub.source };
  if (pub.kind === "audio") label.settings = captureSettings(pub.track);
  return label;
}

/** `m42` -> 42 (chat ids are server-assigned and increasing); -1 for anything else. */
function chatSeq(m) {
  const match = /^m(\d+)$/.exec(m?.id ?? "");
  return match ? Number(match[1]) : -1;
}

function requireId(value, what) {
  if (typeof value !== "string" || value.length === 0 || value.length > 256) {
    throw new TypeError(`${what} must be a non-empty participant id string`);
  }
  return value;
}

function wsUrl(url) {
  const base = typeof location !== "undefined" ? location.href : undefined;
  const u = new URL(url ?? "/ws", base);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new TypeError(`url must be a ws(s):// or http(s):// URL, not ${u.protocol}`);
  }
  if (u.pathname === "/" || u.pathname === "") u.pathname = "/ws";
  return u.href;
}

function supportedCodecs() {
  try {
    const caps = globalThis.RTCRtpReceiver?.getCapabilities?.("video");
    const names = new Set((caps?.codecs ?? []).map((c) => c.mimeType.split("/")[1]?.toUpperCase()));
    const out = ["VP8", "H264"].filter((n) => names.has(n));
    return out.length ? out : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A consultation seen from one participant.
 *
 * Events (all `CustomEvent`s; the payload is in `event.detail`):
 *   joined {participant, room, state}   waiting {position}   admitted   denied
 *   knock {participant}                 knocks {knocks}      room {participants, chat}
 *   participant-joined {participant}    participant-left {participant, reason}
 *   chat {message}                      mode {participant, direction, mode, reason}
 *   track {track, stream, participant, source, kind, mid}   track-ended {... same}
 *   connectionstatechange {state}       signalingstatechange {state}
 *   reconnecting {attempt, delay, code} resumed              ended {reason}
 *   pause {sources, reason} (our senders the server stopped)   reconnecting {media: true, attempt}
 *   error {code, message, ref}          closed {reason}
 */
export class Consultation extends EventTarget {
  /**
   * @param {object} options
   * @param {string} [options.url] WebSocket URL of the server (`ws://host/ws`; an http(s) URL
   *   or a path is turned into one). Default: `/ws` on the page's origin.
   * @param {string} options.token The participant token the platform minted (HS256 JWT).
   * @param {RTCIceServer[]} [options.iceServers] Overrides the servers sent in `joined`.
   * @param {RTCIceTransportPolicy} [options.iceTransportPolicy="all"] `"relay"`: relay
   *   candidates only, every packet through the TURN server of `joined` (docs/turn.md).
   * @param {boolean} [options.reconnect=true] Resume automatically when the socket drops.
   */
  constructor({ url, token, iceServers, iceTransportPolicy = "all", reconnect = true } = {}) {
    super();
    if (typeof token !== "string" || token.split(".").length !== 3) {
      throw new TypeError("token must be a signed JWT string");
    }
    if (iceServers !== undefined && !Array.isArray(iceServers)) {
      throw new TypeError("iceServers must be an array of RTCIceServer");
    }
    if (iceTransportPolicy !== "all" && iceTransportPolicy !== "relay") {
      throw new RangeError('iceTransportPolicy must be "all" or "relay"');
    }
    this._url = wsUrl(url);
    // A fleet: `redirect` sends the socket to the room's node; if that node dies, the client
    // comes back through this address, which sends it on again (docs/protocol.md, "Redirect").
    this._entryUrl = this._url;
    this._token = token;
    this._iceOverride = iceServers;
    this._iceTransportPolicy = iceTransportPolicy;
    this._reconnect = reconnect;

    this._ws = null;
    this._state = "new"; // new|connecting|waiting|admitted|reconnecting|denied|ended|left|closed
    this._joined = false;
    this._me = null;
    this._room = null;
    this._resume = null;
    this._iceServers = [];
    this._participants = new Map();
    this._chat = [];
    this._chatIds = new Set();
    this._chatMore = false; // the server keeps older chat than this._chat[0] (loadEarlierChat)
    this._knocks = new Map();
    this._modes = new Map();
    this._telemetryInit(); // devices
    this._position = null;
    this._closeReason = null;
    this._joinRefused = null;
    this._everAdmitted = false;

    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject, timer}
    this._outbox = []; // messages waiting for a socket after a drop
    this._attempt = 0;
    this._reconnectTimer = null;
    this._pingTimer = null;

    this._pc = null;
    this._dc = null;
    this._makingOffer = false;
    this._holdCandidates = false;
    this._glareHold = false;
    this._glareTimer = null;
    this._offerSkipped = false;
    this._awaitingRoom = false;
    this._candidateQueue = [];
    this._published = new Map(); // RTCRtpTransceiver -> {id, source, kind, track}
    this._requested = []; // publications waiting for a server recvonly m-line
    this._waitingPublish = []; // publish() before admission
    this._remote = new Map(); // mid -> {participant, kind, source, direction}
    this._remoteTracks = new Map(); // mid -> detail of the emitted `track` event
    this._departed = new Set(); // participants who left: their m-lines are dead
    this._chain = Promise.resolve(); // serialises negotiation steps
  }

  // -- getters ------------------------------------------------------------------------
  get state() { return this._state; }
  get me() { return this._me; }
  get room() { return this._room; }
  get position() { return this._position; }
  get participants() { return [...this._participants.values()]; }
  get chat() { return [...this._chat]; }
  /** True when older chat is on the server: fetch it with loadEarlierChat(). */
  get chatMore() { return this._chatMore; }
  get knocks() { return [...this._knocks.values()]; }
  get modes() { return [...this._modes.values()]; }
  get remoteTracks() { return [...this._remoteTracks.values()]; }
  get publications() { return [...this._published.values(), ...this._requested, ...this._waitingPublish]; }
  get connectionState() { return this._pc ? this._pc.connectionState : "new"; }
  get peerConnection() { return this._pc; }
  get dataChannel() { return this._dc; }
  get closeReason() { return this._closeReason; }

  /** RTCStatsReport of the peer connection (empty Map before admission). */
  async getStats() {
    return this._pc ? this._pc.getStats() : new Map();
  }

  // -- connection -----------------------------------------------------------------------
  /** Open the socket and join. Resolves with the `joined` message; rejects on refusal. */
  async connect() {
    if (this._state !== "new") throw new ConsultError("state", `connect() in state ${this._state}`);
    this._setState("connecting");
    return this._open(false);
  }

  _open(resuming, redirects = 0) {
    return new Promise((resolve, reject) => {
      let settled = false;
      const ws = new WebSocket(this._url);
      this._ws = ws;
      // A node a redirect named that does not answer (its machine is gone): given up on after
      // NODE_CONNECT_TIMEOUT_MS; the close sends the next attempt to the entry address.
      if (this._url !== this._entryUrl) {
        const timer = setTimeout(() => {
          if (ws.readyState === WebSocket.CONNECTING) { try { ws.close(); } catch { /* gone */ } }
        }, NODE_CONNECT_TIMEOUT_MS);
        ws.addEventListener?.("open", () => clearTimeout(timer));
        ws.addEventListener?.("close", () => clearTimeout(timer));
      }
      const settle = (fn, v) => { if (!settled) { settled = true; fn(v); } };
      ws.onopen = () => {
        const join = { type: "join", v: PROTOCOL_VERSION, token: this._token };
        if (resuming && this._resume) join.resume = this._resume;
        const codecs = supportedCodecs();
        if (codecs) join.codecs = codecs;
        this._request(join, { queue: false, timeout: REQUEST_TIMEOUT_MS }).then(
          (msg) => {
            if (msg.type === "redirect") { // the room's node: join there (this socket closes)
              const bad = typeof msg.url !== "string" || !/^wss?:\/\//.test(msg.url);
              if (bad || redirects >= MAX_REDIRECTS) {
                this._joinRefused = new ConsultError("redirect", "bad or too many redirects");
                settle(reject, this._joinRefused);
                return;
              }
              this._url = msg.url;
              settled = true; // the next socket settles this promise
              this._open(resuming, redirects + 1).then(resolve, reject);
              return;
            }
            try { this._onJoined(msg, resuming); } catch (e) { this._emitError("client", e); }
            settle(resolve, msg);
          },
          (err) => {
            // The socket closing before the reply is no refusal: its close code decides.
            if (err?.code === "disconnected") return settle(reject, err);
            this._joinRefused = err;
            settle(reject, err);
            try { ws.close(1000, "join refused"); } catch { /* closed */ }
          },
        );
      };
      ws.onmessage = (ev) => { if (this._ws === ws) this._onMessage(ev.data); };
      ws.onerror = () => { /* the close event follows and carries the code */ };
      ws.onclose = (ev) => {
        const current = this._ws === ws;
        if (current) this._ws = null;
        const reason = CLOSE_REASONS[ev.code] ?? `closed-${ev.code}`;
        settle(reject, new ConsultError(reason, ev.reason || `socket closed (${ev.code})`));
        if (!current) return; // a replaced or finished socket: nothing to do
        try { this._onSocketClosed(ev.code, ev.reason); } catch (e) { this._emitError("client", e); }
      };
    });
  }

  _onSocketClosed(code, reason) {
    this._stopPing();
    for (const [, p] of this._pending) {
      clearTimeout(p.timer);
      p.reject(new ConsultError("disconnected", "socket closed before the reply"));
    }
    this._pending.clear();
    if (this._isFinal()) return;
    if (this._joinRefused) {
      const err = this._joinRefused;
      this._joinRefused = null;
      this._emitError(codeOf(err, "join"), err, err.ref ?? null);
      return this._finish("closed", codeOf(err, "join-refused"));
    }
    if (code === CloseCode.DENIED) return this._finish("denied", "denied");
    if (code === CloseCode.KICKED) return this._finish("ended", "kicked");
    if (code === CloseCode.ENDED) return this._finish("ended", "ended");
    // The room's node does not answer (it died): come back through the entry address.
    if (code === 1006 && this._attempt > 0 && this._url !== this._entryUrl) this._url = this._entryUrl;
    const giveUp = this._attempt >= MAX_RECONNECT_ATTEMPTS;
    if (FINAL_CLOSES.has(code) || giveUp || !this._reconnect || !this._joined || !this._resume) {
      return this._finish("closed", CLOSE_REASONS[code] ?? reason ?? `closed-${code}`);
    }
    this._scheduleReconnect(code);
  }

  _scheduleReconnect(code) {
    this._setState("reconnecting");
    const delay = BACKOFF_MS[Math.min(this._attempt, BACKOFF_MS.length - 1)];
    this._attempt += 1;
    this._emit("reconnecting", { attempt: this._attempt, delay, code });
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => {
      this._open(true).catch(() => { /* onclose schedules the next attempt or finishes */ });
    }, delay);
  }

  _onJoined(msg, resuming) {
    // A resume the server could not honour (grace period over) is a fresh join: new
    // participant, new peer connection, back through the waiting room where that applies.
    const rejoined = resuming && (msg.resumed === false
      || (this._me != null && msg.participant?.id != null && msg.participant.id !== this._me.id));
    // Taken back on another node (its node died): same participant, a fresh connection.
    if (rejoined || (resuming && msg.moved === true)) this._resetMedia();
    this._joined = true;
    this._joinRefused = null;
    this._attempt = 0;
    this._me = msg.participant ?? this._me;
    this._room = msg.room ?? this._room;
    if (msg.resume) this._resume = msg.resume;
    if (Array.isArray(msg.iceServers)) this._iceServers = msg.iceServers;
    this._startPing();
    const state = msg.state === "admitted" ? "admitted" : "waiting";
    if (!resuming || rejoined) this._emit("joined", { participant: this._me, room: this._room, state });
    if (state === "admitted") this._becomeAdmitted();
    else this._setState("waiting");
    if (resuming) {
      const outbox = this._outbox.splice(0);
      for (const m of outbox) this._sendRaw(m);
      this._emit("resumed", { state, rejoined, moved: msg.moved === true });
      this._flushTelemetry(); // devices: batches whose ack was lost go again
      // An offer of ours that the lost socket never answered would hang the negotiation.
      this._enqueue(async () => {
        if (this._pc && this._pc.signalingState === "have-local-offer") {
          await this._pc.setLocalDescription({ type: "rollback" });
          this._offerSkipped = true;
        }
        this._releaseOffers();
      });
    }
  }

  _resetMedia() {
    for (const detail of this._remoteTracks.values()) this._emit("track-ended", detail);
    this._remoteTracks.clear();
    this._remote.clear();
    const pubs = [...this._published.values(), ...this._requested];
    this._published.clear();
    this._requested = [];
    for (const pub of pubs) {
      delete pub.transceiver;
      this._waitingPublish.push(pub);
    }
    if (this._pc) {
      try { this._pc.close(); } catch { /* closed */ }
    }
    this._pc = null;
    this._dc = null;
    this._candidateQueue = [];
    this._participants.clear();
    this._knocks.clear();
    this._offerSkipped = false;
    this._glareHold = false;
    clearTimeout(this._glareTimer);
    this._everAdmitted = false;
  }

  _becomeAdmitted() {
    this._setState("admitted");
    this._position = null;
    this._ensurePeerConnection();
    if (!this._everAdmitted) {
      this._everAdmitted = true;
      this._emit("admitted", {});
    }
  }

  // -- messages from the server -----------------------------------------------------------
  _onMessage(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      this._emitError("bad-message", new Error("server sent invalid JSON"));
      return;
    }
    if (!msg || typeof msg.type !== "string") return;
    try {
      this._dispatch(msg);
    } catch (e) {
      this._emitError("client", e);
    }
  }

  _dispatch(msg) {
    if (msg.type !== "pong" && msg.type !== "chat") this._dbg(`recv ${msg.type} ${msg.ref ?? ""} ${msg.code ?? ""}`);
    if (msg.ref != null && this._pending.has(msg.ref)) {
      const p = this._pending.get(msg.ref);
      this._pending.delete(msg.ref);
      clearTimeout(p.timer);
      if (msg.type === "error") p.reject(new ConsultError(msg.code, msg.message, msg.ref));
      else p.resolve(msg);
      if (msg.type !== "error" || p.silent) return;
    }
    switch (msg.type) {
      case "joined": case "ack": case "pong": case "answer":
        return; // replies; handled through _pending
      case "waiting":
        this._position = msg.position ?? null;
        if (this._state !== "waiting") this._setState("waiting");
        return this._emit("waiting", { position: this._position });
      case "knock":
        if (msg.participant?.id) this._knocks.set(msg.participant.id, msg.participant);
        this._emit("knock", { participant: msg.participant });
        return this._emit("knocks", { knocks: this.knocks });
      case "admitted":
        return this._becomeAdmitted();
      case "room":
        return this._onRoom(msg);
      case "denied":
        return this._finish("denied", "denied");
      case "kicked":
        return this._finish("ended", "kicked");
      case "participant-joined":
        return this._onParticipantJoined(msg.participant);
      case "participant-left":
        return this._onParticipantLeft(msg);
      case "chat":
        return this._addChat(msg.message, true);
      case "telemetry": // devices
        return this._onTelemetry([msg.record]);
      case "device-state": // devices
        this._deviceStates.set(msg.participant, msg.state);
        return this._emit("device-state", { participant: msg.participant, state: msg.state });
      case "mode":
        return this._setMode(msg.participant, msg.direction, msg.mode, msg.reason);
      case "pause": // bandwidth fallback (issue 5)
        return this._onPause(msg);
      case "offer":
        return this._enqueue(() => this._onServerOffer(msg));
      case "candidate":
        return this._enqueue(() => this._onServerCandidate(msg.candidate));
      case "redirect": // the room moves to another node (drain, stop): resume there
        if (typeof msg.url === "string" && /^wss?:\/\//.test(msg.url)) this._url = msg.url;
        return;
      case "ended":
        return this._finish("ended", msg.reason ?? "ended");
      case "error":
        // media-timeout: the server closed a media connection that never connected (issue 11).
        if (msg.code === "media-timeout") this._enqueue(() => this._restartMedia());
        return this._emitError(msg.code ?? "error", new Error(msg.message ?? ""), msg.ref ?? null);
      default:
        return; // unknown types are ignored: newer servers may add some
    }
  }

  _onRoom(msg) {
    if (this._state !== "admitted") this._becomeAdmitted();
    const before = new Map(this._participants);
    this._participants.clear();
    for (const p of msg.participants ?? []) if (p?.id) this._participants.set(p.id, p);
    if (this._awaitingRoom) {
      this._awaitingRoom = false;
      const serverOffers = this.participants.some((p) => p.id !== this._me?.id && p.tracks?.length);
      if (!serverOffers) this._releaseOffers(); // else hold until its offer is answered
    }
    if (before.size) { // a resume: say who came and went while the socket was down
      for (const [id, p] of before) if (!this._participants.has(id)) this._participantGone(p, null);
      for (const [id, p] of this._participants) {
        if (!before.has(id)) this._emit("participant-joined", { participant: p });
      }
    }
    for (const id of this._participants.keys()) this._knocks.delete(id);
    if (Array.isArray(msg.waiting)) { // doctors: who is in the waiting room now
      this._knocks.clear();
      for (const p of msg.waiting) if (p?.id) this._knocks.set(p.id, p);
      this._emit("knocks", { knocks: this.knocks });
    }
    this._chatOnRoom(msg.chat ?? [], msg.chat_more === true);
    this._modesOnRoom(); // bandwidth modes that changed while the socket was down (issue 5)
    this._telemetryOnRoom(msg.telemetry); // devices: replay what the socket missed
    this._emit("room", { participants: this.participants, chat: this.chat });
  }

  _setMode(participant, direction, mode, reason) {
    const detail = { participant, direction, mode, reason };
    this._modes.set(`${participant}/${direction}`, detail);
    return this._emit("mode", { ...detail });
  }

  _modesOnRoom() {
    // A `room` snapshot carries each participant's modes: a `mode` event lost with the socket
    // is replayed, with reason "resync" (the snapshot has no reasons).
    for (const p of this._participants.values()) {
      for (const [direction, mode] of Object.entries(p.modes ?? {})) {
        const known = this._modes.get(`${p.id}/${direction}`)?.mode ?? "video";
        if (mode !== known) this._setMode(p.id, direction, mode, "resync");
      }
    }
  }

  _onParticipantJoined(p) {
    if (!p?.id) return;
    const knew = this._participants.has(p.id);
    this._participants.set(p.id, p);
    if (this._knocks.delete(p.id)) this._emit("knocks", { knocks: this.knocks });
    if (!knew) this._emit("participant-joined", { participant: p });
  }

  _onParticipantLeft(msg) {
    const id = typeof msg.participant === "string" ? msg.participant : msg.participant?.id;
    if (!id) return;
    const p = this._participants.get(id) ?? this._knocks.get(id) ?? { id };
    this._participants.delete(id);
    this._participantGone(p, msg.reason ?? null);
  }

  _participantGone(p, reason) {
    const id = p.id;
    this._departed.add(id);
    for (const [mid, detail] of this._remoteTracks) { // before the server renegotiates
      if (detail.participant !== id) continue;
      this._remoteTracks.delete(mid);
      this._emit("track-ended", detail);
    }
    if (this._knocks.delete(id)) this._emit("knocks", { knocks: this.knocks });
    this._emit("participant-left", { participant: p, reason });
  }

  _chatOnRoom(recent, more) {
    // `room` carries the most recent chat only. After a resume whose page does not reach
    // what we have (a gap), the page replaces our list: older chat comes by loadEarlierChat().
    const newest = chatSeq(this._chat[this._chat.length - 1]);
    const gap = this._chat.length > 0 && recent.length > 0 && more && chatSeq(recent[0]) > newest + 1;
    if (gap) {
      this._chat = [];
      this._chatIds.clear();
    }
    if (!this._chat.length || gap) this._chatMore = more;
    for (const m of recent) this._addChat(m, true);
  }

  /**
   * Fetch the page of chat before the oldest message held (`chat-history`) and put it in
   * front of `chat`. Resolves with the messages added (oldest first); `chatMore` says if
   * there is still more. Each is also emitted as a `chat` event with `earlier: true`.
   */
  async loadEarlierChat({ limit } = {}) {
    this._requireJoined("loadEarlierChat");
    const oldest = this._chat[0];
    const req = { type: "chat-history" };
    if (oldest?.id != null) req.before = oldest.id;
    if (limit !== undefined) req.limit = limit;
    const reply = await this._request(req);
    const added = [];
    for (const m of reply.messages ?? []) {
      if (!m || typeof m !== "object" || this._chatIds.has(m.id)) continue;
      this._chatIds.add(m.id);
      added.push(m);
    }
    this._chat.unshift(...added);
    this._chatMore = reply.more === true;
    for (const m of added) this._emit("chat", { message: m, earlier: true });
    return added;
  }

  _addChat(m, announce) {
    if (!m || typeof m !== "object") return;
    if (m.id != null) {
      if (this._chatIds.has(m.id)) return; // replayed after a resume
      this._chatIds.add(m.id);
    }
    this._chat.push(m);
    if (announce) this._emit("chat", { message: m });
  }

  // -- requests ----------------------------------------------------------------------------
  _request(msg, { queue = true, timeout = REQUEST_TIMEOUT_MS, silent = false } = {}) {
    const id = `c${this._nextId++}`;
    const full = { ...msg, id };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new ConsultError("timeout", `no reply to ${msg.type}`));
      }, timeout);
      this._pending.set(id, { resolve, reject, timer, silent });
      if (!this._sendRaw(full)) {
        if (queue && this._state === "reconnecting") {
          this._outbox.push(full); // sent after the resume; timeout still runs
        } else {
          clearTimeout(timer);
          this._pending.delete(id);
          reject(new ConsultError("disconnected", `not connected (${this._state})`));
        }
      }
    });
  }

  _sendRaw(obj) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    try {
      ws.send(JSON.stringify(obj));
      return true;
    } catch {
      return false;
    }
  }

  _requireJoined(what) {
    if (this._state !== "admitted" && this._state !== "waiting" && this._state !== "reconnecting") {
      throw new ConsultError("state", `${what}() in state ${this._state}`);
    }
  }

  /** Send a chat message (plain text). Resolves when the server acknowledged it. */
  async sendChat(text) {
    if (typeof text !== "string") throw new TypeError("chat text must be a string");
    const t = text.trim();
    if (!t) throw new TypeError("chat text is empty");
    if (t.length > MAX_CHAT_CHARS) throw new RangeError(`chat text over ${MAX_CHAT_CHARS} characters`);
    this._requireJoined("sendChat");
    await this._request({ type: "chat", text: t });
  }

  /** Doctor: let a waiting participant in. */
  async admit(participantId) {
    requireId(participantId, "admit(participant)");
    this._requireJoined("admit");
    await this._request({ type: "admit", participant: participantId });
    if (this._knocks.delete(participantId)) this._emit("knocks", { knocks: this.knocks });
  }

  /** Doctor: refuse a waiting participant. */
  async deny(participantId) {
    requireId(participantId, "deny(participant)");
    this._requireJoined("deny");
    await this._request({ type: "deny", participant: participantId });
    if (this._knocks.delete(participantId)) this._emit("knocks", { knocks: this.knocks });
  }

  /** Doctor: remove a participant from the consultation. */
  async kick(participantId) {
    requireId(participantId, "kick(participant)");
    this._requireJoined("kick");
    await this._request({ type: "kick", participant: participantId });
  }

  /** Doctor: end the consultation for everyone. */
  async end() {
    this._requireJoined("end");
    await this._request({ type: "end" });
  }

  /** Leave the consultation (the others see `participant-left`). */
  async leave() {
    if (this._isFinal()) return;
    this._sendRaw({ type: "leave", id: `c${this._nextId++}` });
    this._finish("left", "left");
  }

  // -- devices: device tracks and vital-sign telemetry (docs/devices.md) ------------------
  _telemetryInit() {
    this._telemetry = new Map(); // seq -> record (the room's log, merged live and replayed)
    this._telemetryNext = 1; // next seq to emit (records are emitted in seq order, once)
    this._telemetryOut = []; // [{seq, readings, sending}] not acknowledged yet
    this._telemetrySeq = 0;
    this._telemetrySyncing = false;
    this._telemetryMax = 0;
    this._vitals = {};
    this._deviceStates = new Map();
  }

  /** Every telemetry record received, in order (`{seq, from, kind, t, unit, ...}`). */
  get telemetry() { return [...this._telemetry.values()].filter((r) => r.seq < this._telemetryNext); }
  /** The latest reading of each kind per participant: `{participant: {spo2: record, ...}}`. */
  get vitals() { return this._vitals; }
  get deviceStates() { return Object.fromEntries(this._deviceStates); }

  _prepareDeviceTrack(pub, channels) {
    if (channels != null && channels !== 1 && channels !== 2) throw new RangeError("channels must be 1 or 2");
    pub.channels = channels ?? pub.track.getSettings?.().channelCount ?? 1;
    if (!DEVICE_AUDIO_SOURCES.has(pub.source)) return;
    if ("contentHint" in pub.track) pub.track.contentHint = "music"; // not speech
  }

  /**
   * A stethoscope goes out unprocessed or not at all (issue 19). Processing is switched off
   * with applyConstraints; where the browser keeps it on (Chromium does), the same device is
   * opened again with DEVICE_AUDIO_CONSTRAINTS and that track is published instead (the
   * caller's track is left as it is: it is the caller's). Rejects with `device-audio-processed`
   * when no unprocessed capture can be had.
   */
  async _unprocessedTrack(pub, channels) {
    const track = pub.track;
    const off = Object.fromEntries(PROCESSING.map((k) => [k, false]));
    try {
      await track.applyConstraints?.(off);
    } catch { /* re-opened below */ }
    let on = processingOn(track);
    if (!on.length) return;
    const deviceId = track.getSettings?.().deviceId;
    let fresh = null;
    try {
      if (!deviceId) throw new Error("the track reports no deviceId");
      fresh = await openDeviceAudio(deviceId);
      on = processingOn(fresh);
    } catch (e) {
      throw new ConsultError("device-audio-processed",
        `stethoscope capture keeps ${on.join(", ")} on and cannot be re-opened: ${e?.message ?? e}`);
    }
    if (on.length) {
      fresh.stop();
      throw new ConsultError("device-audio-processed", `stethoscope capture keeps ${on.join(", ")} on`);
    }
    if ("contentHint" in fresh) fresh.contentHint = "music";
    pub.appTrack = track; // the caller's, left running; unpublish(track) still finds it
    pub.track = fresh;
    pub.ownTrack = true; // consult.js opened it: unpublish() stops it
    pub.channels = channels ?? fresh.getSettings?.().channelCount ?? 1;
  }

  /**
   * Send vital-sign readings (the schema in docs/devices.md). Batches are numbered and kept
   * until the server acknowledges them, and re-sent after a reconnect (the server stores a
   * batch once). Resolves when this batch is acknowledged; rejects with `bad-telemetry`.
   */
  sendTelemetry(readings) {
    if (!Array.isArray(readings) || !readings.length) throw new TypeError("readings must be a non-empty array");
    this._requireJoined("sendTelemetry");
    const batch = { seq: ++this._telemetrySeq, readings, sending: false };
    const done = new Promise((resolve, reject) => { batch.resolve = resolve; batch.reject = reject; });
    this._telemetryOut.push(batch);
    this._flushTelemetry();
    return done;
  }

  _flushTelemetry() {
    for (const batch of this._telemetryOut) {
      if (batch.sending) continue;
      batch.sending = true;
      this._request({ type: "telemetry", seq: batch.seq, readings: batch.readings }, { queue: false, silent: true })
        .then(() => {
          this._telemetryOut = this._telemetryOut.filter((b) => b !== batch);
          batch.resolve();
        })
        .catch((e) => {
          batch.sending = false;
          if (e?.code === "disconnected" || e?.code === "timeout") return; // re-sent on resume
          this._telemetryOut = this._telemetryOut.filter((b) => b !== batch);
          batch.reject(e);
          this._emitError(codeOf(e, "bad-telemetry"), e, e.ref ?? null);
        });
    }
  }

  _onTelemetry(records, syncing = false) {
    for (const r of records) {
      if (!r || !Number.isInteger(r.seq) || r.seq < this._telemetryNext) continue;
      this._telemetry.set(r.seq, r);
      this._telemetryMax = Math.max(this._telemetryMax, r.seq);
    }
    while (this._telemetry.has(this._telemetryNext)) {
      const r = this._telemetry.get(this._telemetryNext++);
      (this._vitals[r.from] ??= {})[r.kind] = r;
      this._emit("telemetry", { record: r });
    }
    if (!syncing && this._telemetryMax >= this._telemetryNext) this._syncTelemetry(); // a gap
  }

  _telemetryOnRoom(info) {
    if (info && Number.isInteger(info.last) && info.last >= this._telemetryNext) this._syncTelemetry();
  }

  async _syncTelemetry() {
    if (this._telemetrySyncing) return;
    this._telemetrySyncing = true;
    try {
      for (;;) {
        const reply = await this._request({ type: "telemetry-history", after: this._telemetryNext - 1 }, { queue: false });
        const records = reply.records ?? [];
        this._onTelemetry(records, true);
        if (!records.length || this._telemetryNext > (reply.last ?? 0)) break;
      }
    } catch (e) {
      if (e?.code !== "disconnected") this._emitError(codeOf(e, "telemetry"), e);
    } finally {
      this._telemetrySyncing = false;
    }
  }
  // -- end devices ------------------------------------------------------------------------

  // -- publishing ------------------------------------------------------------------------
  /**
   * Publish a local track under a source label. Returns the publication
   * `{id, source, kind, track}`. Before admission the track waits and goes out once admitted.
   * `negotiate: "server"` asks the server to offer a recvonly m-line instead of offering.
   */
  publish(track, { source, negotiate = "client", channels } = {}) {
    if (!track || typeof track.kind !== "string" || typeof track.stop !== "function") {
      throw new TypeError("publish() needs a MediaStreamTrack");
    }
    if (!Object.hasOwn(SOURCES, source)) {
      throw new TypeError(`source must be one of ${Object.keys(SOURCES).join(", ")}`);
    }
    if (SOURCES[source] !== track.kind) {
      throw new TypeError(`source ${source} carries ${SOURCES[source]}, not ${track.kind}`);
    }
    if (negotiate !== "client" && negotiate !== "server") {
      throw new TypeError('negotiate must be "client" or "server"');
    }
    if (this._isFinal()) throw new ConsultError("state", `publish() in state ${this._state}`);
    if (this.publications.some((p) => p.track === track || p.appTrack === track)) {
      throw new ConsultError("already-published", "this track is already published");
    }
    const pub = { id: `p${this._nextId++}`, source, kind: track.kind, track, negotiate };
    this._prepareDeviceTrack(pub, channels); // devices: stethoscope audio untouched
    if (!DEVICE_AUDIO_SOURCES.has(source)) {
      pub.ready = Promise.resolve(pub);
      if (!this._pc) this._waitingPublish.push(pub);
      else this._startPublication(pub);
      return pub;
    }
    // A stethoscope waits (in _waitingPublish) until its capture is known to be unprocessed.
    pub.verifying = true;
    this._waitingPublish.push(pub);
    pub.ready = this._unprocessedTrack(pub, channels).then(
      () => {
        pub.verifying = false;
        const i = this._waitingPublish.indexOf(pub);
        if (i < 0) { // unpublished meanwhile
          if (pub.ownTrack) pub.track.stop();
          return pub;
        }
        if (this._pc) {
          this._waitingPublish.splice(i, 1);
          this._startPublication(pub);
        }
        return pub;
      },
      (e) => {
        this._waitingPublish = this._waitingPublish.filter((p) => p !== pub);
        this._emitError(codeOf(e, "device-audio-processed"), e);
        throw e;
      },
    );
    pub.ready.catch(() => {}); // reported as an `error` event; awaited by whoever wants it
    return pub;
  }

  _startPublication(pub) {
    if (pub.negotiate === "server") {
      this._requested.push(pub);
      this._request({ type: "publish", tracks: [{ kind: pub.kind, ...trackLabel(pub) }] }).catch(
        (e) => {
          this._requested = this._requested.filter((p) => p !== pub);
          this._emitError(codeOf(e, "publish"), e, e.ref ?? null);
        },
      );
      return;
    }
    const tr = this._pc.addTransceiver(pub.track, { direction: "sendonly" });
    pub.transceiver = tr;
    this._published.set(tr, pub);
  }

  /** Stop publishing a track (or a publication returned by publish()). */
  unpublish(trackOrPublication) {
    const match = (p) => p === trackOrPublication || p.track === trackOrPublication
      || (p.appTrack != null && p.appTrack === trackOrPublication);
    const stopOwn = (p) => { if (match(p) && p.ownTrack && !p.verifying) p.track.stop(); };
    this._waitingPublish.forEach(stopOwn);
    this._requested.forEach(stopOwn);
    this._waitingPublish = this._waitingPublish.filter((p) => !match(p));
    this._requested = this._requested.filter((p) => !match(p));
    for (const [tr, pub] of this._published) {
      if (!match(pub)) continue;
      this._published.delete(tr);
      if (pub.ownTrack) pub.track.stop(); // a re-opened stethoscope (issue 19)
      try {
        if (this._pc && this._pc.signalingState !== "closed") {
          tr.sender.replaceTrack(null).catch(() => {});
          tr.direction = "inactive"; // fires negotiationneeded; the next offer drops it
        }
      } catch (e) {
        this._emitError("client", e);
      }
      return true;
    }
    return false;
  }

  /** Replace the track of a publication (e.g. switch camera) without renegotiation. */
  async replaceTrack(publication, track) {
    if (!publication?.transceiver) throw new ConsultError("state", "publication is not live");
    if (track && track.kind !== publication.kind) throw new TypeError("kind mismatch");
    await publication.transceiver.sender.replaceTrack(track);
    publication.track = track;
  }

  // -- media elements ------------------------------------------------------------------
  /**
   * Show a track in a <video> or <audio> element. `trackInfo` is a `track` event's detail,
   * a publication, or a MediaStreamTrack. Local video is muted. Returns the element.
   */
  attach(trackInfo, element) {
    const track = trackInfo?.track ?? trackInfo;
    if (!track || typeof track.kind !== "string") throw new TypeError("attach() needs a track");
    if (!element || !("srcObject" in element)) throw new TypeError("attach() needs a media element");
    element.srcObject = trackInfo?.stream ?? new MediaStream([track]);
    element.autoplay = true;
    if ("playsInline" in element) element.playsInline = true;
    const local = this.publications.some((p) => p.track === track);
    if (local) element.muted = true;
    if (element.dataset) {
      element.dataset.source = trackInfo?.source ?? "";
      element.dataset.participant = trackInfo?.participant ?? (local ? this._me?.id ?? "" : "");
    }
    const p = element.play?.();
    if (p && typeof p.catch === "function") p.catch(() => { /* autoplay policy; user gesture plays */ });
    return element;
  }

  /** Detach whatever a media element shows. */
  detach(element) {
    if (element && "srcObject" in element) element.srcObject = null;
  }

  // -- WebRTC ------------------------------------------------------------------------------
  _ensurePeerConnection() {
    if (this._pc) return;
    const pc = new RTCPeerConnection({
      iceServers: this._iceOverride ?? this._iceServers,
      iceTransportPolicy: this._iceTransportPolicy,
      bundlePolicy: "max-bundle",
      rtcpMuxPolicy: "require",
    });
    this._pc = pc;
    // Created before the first offer so it is in every offer (same on the server side).
    this._dc = pc.createDataChannel("consult", { negotiated: true, id: 0 });
    this._dc.onmessage = (ev) => this._emit("data", { data: ev.data });
    pc.onnegotiationneeded = () => { this._dbg("negotiationneeded"); this._enqueue(() => this._offer()); };
    // The first negotiation must not glare: Chromium, after rolling back an offer that carried
    // the data channel, rejects the server's data channel m-line for the life of the
    // connection. Until `room` says whether others publish (then the server offers first),
    // hold our offers.
    this._awaitingRoom = true;
    this._holdOffers(FIRST_OFFER_WAIT_MS);
    pc.onicecandidate = (ev) => this._onLocalCandidate(ev.candidate);
    pc.onconnectionstatechange = () => {
      this._emit("connectionstatechange", { state: pc.connectionState });
      this._onConnected(pc); // an offer held while connecting
      this._watchMedia(pc); // automatic media restart (issue 5)
    };
    pc.onsignalingstatechange = () => this._emit("signalingstatechange", { state: pc.signalingState });
    const ready = this._waitingPublish.filter((p) => !p.verifying); // a stethoscope being
    this._waitingPublish = this._waitingPublish.filter((p) => p.verifying); // checked waits
    for (const pub of ready) this._startPublication(pub);
  }

  // -- bandwidth fallback and media restart (issue 5) -------------------------------------
  // `pause {sources, reason}`: the server asks us to stop these senders (our uplink is short);
  // an empty list resumes them. The track stays ours; the sender just sends nothing.
  _onPause(msg) {
    const paused = new Set(Array.isArray(msg.sources) ? msg.sources : []);
    this._pausedSources = paused;
    for (const [tr, pub] of this._published) {
      const want = paused.has(pub.source) ? null : pub.track;
      if (tr.sender.track !== want) tr.sender.replaceTrack(want).catch((e) => this._emitError("client", e));
    }
    this._emit("pause", { sources: [...paused], reason: msg.reason ?? null });
  }

  // ICE failed, or disconnected for MEDIA_RESTART_MS: start a fresh peer connection (the
  // server also answers an app's pc.restartIce(), docs/media.md, but the aiortc client cannot
  // restart ICE: both take this path). `reconnect` makes the server replace its side too,
  // and its next offer carries a recvonly m-line per source we published.
  _watchMedia(pc) {
    if (pc !== this._pc || this._state !== "admitted") return;
    const state = pc.connectionState;
    clearTimeout(this._mediaTimer);
    this._mediaTimer = null;
    if (state === "failed") this._enqueue(() => this._restartMedia());
    else if (state === "disconnected") {
      this._mediaTimer = setTimeout(() => {
        if (pc === this._pc && ["disconnected", "failed"].includes(pc.connectionState)) {
          this._enqueue(() => this._restartMedia());
        }
      }, MEDIA_RESTART_MS);
    }
  }

  async _restartMedia() {
    if (this._state !== "admitted" || !this._pc) return;
    const old = this._pc;
    for (const pub of this._published.values()) {
      delete pub.transceiver;
      this._requested.push(pub);
    }
    this._published.clear();
    old.onconnectionstatechange = old.onnegotiationneeded = old.onicecandidate = null;
    old.onsignalingstatechange = null;
    old.close();
    for (const detail of this._remoteTracks.values()) this._emit("track-ended", detail);
    this._remoteTracks.clear();
    this._remote.clear();
    this._pc = this._dc = null;
    this._ensurePeerConnection();
    this._mediaRestarts = (this._mediaRestarts ?? 0) + 1;
    this._emit("reconnecting", { media: true, attempt: this._mediaRestarts });
    await this._request({ type: "reconnect" });
  }
  // -- end bandwidth fallback and media restart --

  // Negotiation steps run one at a time, in arrival order.
  _enqueue(step) {
    if (globalThis.CONSULT_DEBUG) step = this._traced(step);
    this._chain = this._chain.then(step).catch((e) => this._emitError(codeOf(e, "negotiation"), e));
    return this._chain;
  }

  // -- negotiation trace (docs/client.md, "Debugging negotiation") --------------------------
  // `globalThis.CONSULT_DEBUG = (line) => ...` (or `true`: the console) receives one line per
  // negotiation step with the signaling and connection states; compat keeps it as evidence.
  _dbg(text) {
    const sink = globalThis.CONSULT_DEBUG;
    if (!sink) return;
    const pc = this._pc;
    const line = `${Math.round(performance.now())} ${text} [${pc?.signalingState} ${pc?.connectionState}`
      + ` hold=${this._glareHold} skipped=${this._offerSkipped} state=${this._state}]`;
    if (typeof sink === "function") sink(line);
    else console.log(`consult.js ${line}`);
  }

  _traced(step) {
    const n = (this._dbgSteps = (this._dbgSteps ?? 0) + 1);
    this._dbg(`step #${n} queued`);
    return async () => {
      this._dbg(`step #${n} runs`);
      try {
        await step();
        this._dbg(`step #${n} done`);
      } catch (e) {
        this._dbg(`step #${n} failed: ${e?.code ?? ""} ${e?.message ?? e}`);
        throw e;
      }
    };
  }
  // -- end negotiation trace --

  async _offer() {
    const pc = this._pc;
    this._dbg("offer?");
    if (!pc || pc.signalingState === "closed") return;
    if (pc.signalingState !== "stable" || this._state !== "admitted" || this._glareHold
      || this._stillConnecting(pc)) {
      this._offerSkipped = true; // made up for after the server offer, resume, hold or connection
      return;
    }
    this._offerSkipped = false;
    let answer;
    try {
      this._makingOffer = this._holdCandidates = true;
      this._dbg("offer: SLD");
      await pc.setLocalDescription();
      this._dbg("offer: SLD done");
      if (pc.signalingState !== "have-local-offer") return; // a server offer won meanwhile
      const tracks = {};
      for (const [tr, pub] of this._published) {
        if (tr.mid != null && tr.currentDirection !== "stopped") tracks[tr.mid] = trackLabel(pub);
      }
      const req = this._request(
        { type: "offer", sdp: pc.localDescription.sdp, tracks },
        { queue: false, silent: true },
      );
      this._makingOffer = this._holdCandidates = false;
      this._flushCandidates();
      this._dbg("offer: sent");
      answer = await req;
      this._dbg("offer: answered");
    } catch (e) {
      this._dbg(`offer: error ${e?.code} ${e?.message}`);
      this._makingOffer = this._holdCandidates = false;
      if (e?.code === "glare") {
        // The server's offer crossed ours and is on its way (or already answered): drop ours
        // and offer again once that offer is answered (or after a second, whichever first).
        if (pc.signalingState === "have-local-offer") await pc.setLocalDescription({ type: "rollback" });
        this._holdOffers();
        return;
      }
      if (pc.signalingState === "have-local-offer") {
        await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
      }
      if (e?.code === "disconnected") {
        this._offerSkipped = true; // the resume offers again
        return;
      }
      throw e;
    } finally {
      this._makingOffer = this._holdCandidates = false;
    }
    if (pc.signalingState !== "have-local-offer") return; // rolled back by a server offer
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    this._dbg("offer: SRD(answer) done");
  }

  // A renegotiation waits until the first connection is up: in compat runs, Firefox pages
  // that rolled back an offer (glare with a server offer) while their ICE/DTLS transport was
  // still connecting ended with a transport that carried no media either way (docs/compat.md).
  // The server's offers are answered meanwhile; ours goes out once connected.
  _stillConnecting(pc) {
    return pc.currentRemoteDescription != null
      && (pc.connectionState === "new" || pc.connectionState === "connecting");
  }

  _onConnected(pc) {
    if (pc === this._pc && pc.connectionState === "connected" && this._offerSkipped && !this._glareHold) {
      this._enqueue(() => this._offer());
    }
  }

  _holdOffers(ms = GLARE_HOLD_MS) {
    this._dbg(`hold ${ms}`);
    this._glareHold = true;
    clearTimeout(this._glareTimer);
    this._glareTimer = setTimeout(() => this._releaseOffers(), ms);
  }

  // After a glare hold, a server offer or a resume: make the offer we skipped, if any.
  _releaseOffers() {
    this._dbg("release");
    this._glareHold = false;
    clearTimeout(this._glareTimer);
    if (this._offerSkipped) this._enqueue(() => this._offer());
  }

  async _onServerOffer(msg) {
    const pc = this._pc;
    if (!pc) {
      this._emitError("state", new Error("server offer before admission"));
      return;
    }
    if (typeof msg.sdp !== "string") return this._emitError("bad-message", new Error("offer without sdp"));
    this._dbg("server offer");
    // Polite peer: a crossing offer of ours is rolled back.
    if (pc.signalingState === "have-local-offer") await pc.setLocalDescription({ type: "rollback" });
    const tracks = msg.tracks && typeof msg.tracks === "object" ? msg.tracks : {};
    for (const [mid, info] of Object.entries(tracks)) if (info && typeof info === "object") this._remote.set(mid, info);
    await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
    this._dbg("server offer: SRD done");
    this._attachRequested();
    try {
      this._holdCandidates = true;
      await pc.setLocalDescription();
      this._dbg("server offer: SLD(answer) done");
      this._sendRaw({ type: "answer", id: `c${this._nextId++}`, sdp: pc.localDescription.sdp });
    } finally {
      this._holdCandidates = false;
    }
    this._flushCandidates();
    this._syncRemoteTracks();
    this._releaseOffers();
  }

  // recvonly m-lines of a server offer carry tracks asked for with a `publish` message.
  _attachRequested() {
    for (const tr of this._pc.getTransceivers()) {
      const info = tr.mid != null ? this._remote.get(tr.mid) : null;
      if (!info || info.direction !== "recvonly" || this._published.has(tr)) continue;
      const i = this._requested.findIndex((p) => p.source === info.source && p.kind === (info.kind ?? p.kind));
      if (i < 0) continue;
      const [pub] = this._requested.splice(i, 1);
      const paused = this._pausedSources?.has(pub.source); // bandwidth fallback (issue 5)
      tr.sender.replaceTrack(paused ? null : pub.track).catch((e) => this._emitError("client", e));
      tr.direction = "sendonly";
      pub.transceiver = tr;
      this._published.set(tr, pub);
    }
  }

  // Emit `track` for every m-line the server now sends us, `track-ended` for those it dropped.
  _syncRemoteTracks() {
    const live = new Set();
    for (const tr of this._pc.getTransceivers()) {
      const dir = tr.currentDirection;
      if (tr.mid == null || this._published.has(tr) || (dir !== "recvonly" && dir !== "sendrecv")) continue;
      if (this._departed.has(this._remote.get(tr.mid)?.participant)) continue;
      live.add(tr.mid);
      this._onTrack(tr);
    }
    for (const [mid, detail] of this._remoteTracks) {
      if (live.has(mid)) continue;
      this._remoteTracks.delete(mid);
      this._emit("track-ended", detail);
    }
  }

  _onTrack(tr) {
    const mid = tr.mid;
    const track = tr.receiver.track;
    const info = this._remote.get(mid) ?? { kind: track.kind };
    const old = this._remoteTracks.get(mid);
    const same = old && old.track === track
      && old.participant === (info.participant ?? null) && old.source === (info.source ?? null);
    if (same) return;
    if (old) this._emit("track-ended", old);
    const detail = {
      track,
      stream: new MediaStream([track]),
      participant: info.participant ?? null,
      source: info.source ?? null,
      kind: info.kind ?? track.kind,
      mid,
      warnings: Array.isArray(info.warnings) ? info.warnings : [], // e.g. processed-audio
    };
    this._remoteTracks.set(mid, detail);
    this._emit("track", detail);
  }

  _onLocalCandidate(candidate) {
    const c = candidate
      ? { candidate: candidate.candidate, sdpMid: candidate.sdpMid, sdpMLineIndex: candidate.sdpMLineIndex }
      : null;
    if (c && !c.candidate) return; // end-of-candidates for one generation; null follows
    this._candidateQueue.push(c);
    this._flushCandidates();
  }

  _flushCandidates() {
    const pc = this._pc;
    if (!pc || !pc.localDescription || this._holdCandidates) return;
    while (this._candidateQueue.length) {
      const c = this._candidateQueue[0];
      const msg = { type: "candidate", id: `c${this._nextId++}`, candidate: c };
      if (!this._sendRaw(msg)) {
        if (this._state === "reconnecting") { this._outbox.push(msg); this._candidateQueue.shift(); continue; }
        return;
      }
      this._candidateQueue.shift();
    }
  }

  async _onServerCandidate(c) {
    if (!this._pc) return;
    try {
      await this._pc.addIceCandidate(c ?? null);
    } catch (e) {
      this._emitError("candidate", e);
    }
  }

  // -- housekeeping ------------------------------------------------------------------------
  _startPing() {
    this._stopPing();
    this._pingTimer = setInterval(() => {
      const ws = this._ws;
      this._request({ type: "ping" }, { queue: false, silent: true, timeout: PING_TIMEOUT_MS })
        .catch((e) => {
          // No pong: a half-open connection (network switch, sleep). Resume on a new one.
          if (e?.code === "timeout" && ws && this._ws === ws) this._abandonSocket(ws);
        });
    }, PING_INTERVAL_MS);
  }

  _abandonSocket(ws) {
    this._ws = null; // its close event, whenever it comes, is ignored
    try { ws.close(); } catch { /* already closing */ }
    this._onSocketClosed(1006, "no pong");
  }

  _stopPing() {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
  }

  _isFinal() {
    return ["denied", "ended", "left", "closed"].includes(this._state);
  }

  _finish(state, reason) {
    if (this._isFinal()) return;
    this._closeReason = reason;
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._glareTimer);
    this._stopPing();
    this._setState(state);
    const ws = this._ws;
    this._ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) {
      try { ws.close(1000, reason); } catch { /* already closing */ }
    }
    for (const [, p] of this._pending) {
      clearTimeout(p.timer);
      p.reject(new ConsultError(reason, `consultation ${state}`));
    }
    this._pending.clear();
    for (const detail of this._remoteTracks.values()) this._emit("track-ended", detail);
    this._remoteTracks.clear();
    if (this._pc) {
      try { this._pc.close(); } catch { /* closed */ }
    }
    if (state === "denied") this._emit("denied", {});
    if (state === "ended") this._emit("ended", { reason });
    this._emit("closed", { reason });
  }

  _setState(state) {
    if (this._state === state) return;
    this._state = state;
    this._emit("state", { state });
  }

  _emit(type, detail) {
    // Listeners' exceptions are reported by the browser, never thrown into our code.
    try {
      this.dispatchEvent(new CustomEvent(type, { detail }));
    } catch (e) {
      try { console.error("consult.js: dispatching", type, e); } catch { /* no console */ }
    }
  }

  _emitError(code, err, ref = null) {
    this._emit("error", { code, message: err?.message ?? String(err), ref });
  }
}

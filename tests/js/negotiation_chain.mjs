// Unit test of consult.js's negotiation chain (pure logic: the socket and the peer connection
// are fakes that record what the client does). Run by tests/test_client_negotiation.py with
// Node, given the URL of a copy of consult.js named .mjs (an ES module for every Node, 18 too);
// prints one JSON line {ok, checks, error}.
//
// Checked: a renegotiation (negotiationneeded after the first exchange) waits while the peer
// connection is still connecting, the server's offers are answered meanwhile, and the held
// offer goes out once the connection is up. Firefox, rolling back an offer that crossed a
// server offer while its transport was connecting, kept a transport that carried no media
// (compat, firefox patients): the client no longer offers then. Also: a `room` snapshot
// replays the bandwidth modes a lost socket missed, once. The server's `media-timeout` error
// makes the client start a fresh peer connection and send `reconnect`.

import "./node18.mjs";
import { FakeWebSocket, sent, socket } from "./fake_socket.mjs";


FakeWebSocket.answer = (ws, msg) => {
  if (msg.type === "offer") {
    ws.reply({ type: "answer", ref: msg.id, sdp: `answer to ${msg.sdp}` });
  } else if (msg.type === "candidate" || msg.type === "answer" || msg.type === "reconnect") {
    ws.reply({ type: "ack", ref: msg.id });
  }
};

class FakePeerConnection {
  constructor() {
    this.signalingState = "stable";
    this.connectionState = "new";
    this.localDescription = null;
    this.remoteDescription = null;
    this.currentRemoteDescription = null;
    this.transceivers = [];
    this.offers = 0;
    pcs.push(this);
  }
  createDataChannel() { return { readyState: "connecting", send() {} }; }
  addTransceiver(track, { direction }) {
    const t = { mid: null, direction, currentDirection: null,
      sender: { track, replaceTrack: async (x) => { t.sender.track = x; } }, receiver: { track: { kind: track.kind } } };
    this.transceivers.push(t);
    setTimeout(() => this.onnegotiationneeded?.(), 0);
    return t;
  }
  getTransceivers() { return this.transceivers; }
  async setLocalDescription(desc) {
    await null;
    if (desc?.type === "rollback") { this.signalingState = "stable"; return; }
    if (this.signalingState === "have-remote-offer") {
      this.localDescription = { type: "answer", sdp: "client answer" };
      this.signalingState = "stable";
    } else {
      this.offers += 1;
      this.localDescription = { type: "offer", sdp: `client offer ${this.offers}` };
      this.signalingState = "have-local-offer";
    }
    this.onsignalingstatechange?.();
  }
  async setRemoteDescription(desc) {
    await null;
    this.remoteDescription = desc;
    if (desc.type === "offer") this.signalingState = "have-remote-offer";
    else {
      this.signalingState = "stable";
      this.currentRemoteDescription = desc;
      for (const t of this.transceivers) { t.mid ??= String(this.transceivers.indexOf(t) + 1); t.currentDirection = t.direction; }
      if (this.connectionState === "new") this.setConnection("connecting");
    }
    this.onsignalingstatechange?.();
  }
  setConnection(state) {
    this.connectionState = state;
    this.onconnectionstatechange?.();
  }
  async addIceCandidate() {}
  async getStats() { return new Map(); }
  close() { this.signalingState = "closed"; }
}

const pcs = [];
globalThis.WebSocket = FakeWebSocket;
globalThis.RTCPeerConnection = FakePeerConnection;
globalThis.RTCRtpReceiver = { getCapabilities: () => ({ codecs: [{ mimeType: "video/VP8" }] }) };
globalThis.MediaStream = class { constructor(tracks) { this.tracks = tracks; } };
globalThis.location = { href: "http://127.0.0.1/" };

const checks = [];
function check(what, ok, detail) {
  checks.push({ what, ok: Boolean(ok), detail });
  if (!ok) throw new Error(`${what}: ${JSON.stringify(detail)}`);
}
const tick = (ms = 20) => new Promise((r) => setTimeout(r, ms));
async function until(what, predicate, ms = 3000) {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) check(what, false, sent.map((m) => m.type));
    await tick(5);
  }
}
const offers = () => sent.filter((m) => m.type === "offer");
const track = (kind) => ({ kind, stop() {}, getSettings: () => ({}) });

const consultUrl = process.argv[2];
let consult;
try {
  const { Consultation } = await import(consultUrl);
  consult = new Consultation({ url: "ws://127.0.0.1/ws", token: "a.b.c" });
  const errors = [];
  consult.addEventListener("error", (e) => errors.push(e.detail));
  await consult.connect();
  await until("admitted", () => consult.state === "admitted" && pcs.length === 1);
  const pc = pcs[0];

  consult.publish(track("audio"), { source: "microphone" });
  await until("the first offer", () => offers().length === 1 && pc.connectionState === "connecting");
  check("first exchange done, connecting", pc.signalingState === "stable", pc.signalingState);

  // Renegotiation while connecting: held.
  consult.publish(track("video"), { source: "camera" });
  await tick(100);
  check("no offer while connecting", offers().length === 1, offers().length);

  // A server offer meanwhile is answered.
  socket.reply({ type: "offer", sdp: "server offer", tracks: { 3: { participant: "p2", source: "camera", kind: "video", direction: "sendonly" } } });
  await until("the answer to the server offer", () => sent.some((m) => m.type === "answer"));
  await tick(100);
  check("still no offer while connecting", offers().length === 1, offers().length);

  // Connected: the held offer goes out.
  pc.setConnection("connected");
  await until("the held offer once connected", () => offers().length === 2);
  check("the held offer is the renegotiation", offers()[1].sdp === "client offer 2", offers()[1].sdp);
  await until("stable after the answer", () => pc.signalingState === "stable");

  // A `room` snapshot (after a resume) replays the bandwidth modes that changed meanwhile.
  const modes = [];
  consult.addEventListener("mode", (e) => modes.push(e.detail));
  const room = { type: "room", chat: [], participants: [
    { id: "p1", role: "patient", tracks: [], modes: { uplink: "audio-only", downlink: "video" } }] };
  socket.reply(room);
  await until("the mode the snapshot carries", () => modes.length === 1);
  check("the snapshot's mode is an event", modes[0].direction === "uplink"
    && modes[0].mode === "audio-only" && modes[0].reason === "resync", modes);
  socket.reply(room);
  await tick(100);
  check("a known mode is not replayed", modes.length === 1, modes);
  check("no client errors", errors.length === 0, errors);

  // media-timeout (issue 11): the server closed a connection that never connected; the client
  // starts a fresh one by itself and sends `reconnect`.
  socket.reply({ type: "error", code: "media-timeout", message: "did not connect", ref: null });
  await until("reconnect after media-timeout", () => sent.some((m) => m.type === "reconnect"));
  check("a fresh peer connection", pcs.length === 2 && pc.signalingState === "closed", pcs.length);
  check("the error is reported", errors.some((e) => e.code === "media-timeout"), errors);
  console.log(JSON.stringify({ ok: true, checks }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, checks, error: String(e?.stack ?? e), sent: sent.map((m) => m.type) }));
} finally {
  try { await consult?.leave(); } catch { /* closed */ }
  process.exit(0);
}

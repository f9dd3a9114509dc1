// Unit test of consult.js's ICE configuration (docs/turn.md): the peer connection gets the
// `iceServers` of `joined` unchanged (a TURN entry's username and credential included) and
// the `iceTransportPolicy` option ("all" by default, "relay": relay candidates only); any
// other policy is a RangeError. Run by tests/test_turn.py with Node; prints one JSON line
// {ok, checks, error}.

import "./node18.mjs";
import { FakeWebSocket, sent } from "./fake_socket.mjs";

const TURN = {
  urls: ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349?transport=tcp"],
  username: "1700003600:p1",
  credential: "9MYXzUfKbdeZkxMWbfYEE808j8Y=",
};
const STUN = { urls: ["stun:stun.example.org:3478"] };
FakeWebSocket.iceServers = [TURN, STUN];

const configs = []; // what each peer connection was made with
class FakePeerConnection {
  constructor(config) {
    configs.push(config);
    this.signalingState = "stable";
    this.connectionState = "new";
  }
  createDataChannel() { return { readyState: "connecting", send() {} }; }
  getTransceivers() { return []; }
  async getStats() { return new Map(); }
  close() { this.signalingState = "closed"; }
}

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

const made = [];
try {
  const { Consultation } = await import(process.argv[2]);
  let refused = null;
  try {
    new Consultation({ url: "ws://127.0.0.1/ws", token: "a.b.c", iceTransportPolicy: "none" });
  } catch (e) {
    refused = e;
  }
  check("a bad policy is a RangeError", refused instanceof RangeError, String(refused));

  for (const policy of [undefined, "relay"]) {
    const consult = new Consultation({ url: "ws://127.0.0.1/ws", token: "a.b.c", iceTransportPolicy: policy });
    made.push(consult);
    const joined = await consult.connect();
    for (let i = 0; i < 100 && configs.length < made.length; i++) await tick(5);
    const config = configs.at(-1);
    check(`joined's iceServers (${policy})`, JSON.stringify(joined.iceServers) === JSON.stringify([TURN, STUN]), joined.iceServers);
    check(`the pc's iceServers (${policy})`, JSON.stringify(config?.iceServers) === JSON.stringify([TURN, STUN]), config);
    check(`the pc's policy (${policy})`, config?.iceTransportPolicy === (policy ?? "all"), config);
  }
  console.log(JSON.stringify({ ok: true, checks }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, checks, error: String(e?.stack ?? e), sent: sent.map((m) => m.type) }));
} finally {
  for (const consult of made) {
    try { await consult.leave(); } catch { /* closed */ }
  }
  process.exit(0);
}

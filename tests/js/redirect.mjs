// Unit test of consult.js in a fleet of nodes (docs/protocol.md, "Redirect"): a `redirect`
// reply to `join` is followed to the room's node; a pushed `redirect` (the room moves) sends
// the resume there, and a `joined` with `moved` restarts the media connection
// (`resumed {moved: true}`); a room's node that stops answering sends the next resume back
// to the entry address; a join closed with 1013 (try again later) is retried. Run by tests/test_fleet.py with Node; prints one JSON line
// {ok, checks, error}.

import "./node18.mjs";

const ENTRY = "ws://entry.example/ws";
const NODE_B = "ws://node-b.example/ws";
const NODE_C = "ws://node-c.example/ws";
const opened = []; // [url, join message] per socket that got a join
const down = new Set(); // urls that refuse connections (a dead node)
let current = null;
let refuseNext = 0; // joins node B answers with close 1013 (try again later)

class Socket {
  static CONNECTING = 0;
  static OPEN = 1;
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    current = this;
    setTimeout(() => {
      if (down.has(url)) {
        this.readyState = 3;
        this.onclose?.({ code: 1006, reason: "" });
        return;
      }
      this.readyState = 1;
      this.onopen?.();
    }, 0);
  }
  send(text) {
    const msg = JSON.parse(text);
    if (msg.type !== "join") return;
    opened.push([this.url, msg]);
    if (this.url === NODE_B && refuseNext > 0) { // Redis cannot say where the room is
      refuseNext -= 1;
      setTimeout(() => this.drop(1013, "fleet unavailable: try again"), 5);
      return;
    }
    if (this.url === ENTRY) { // the room is on node B: go there
      this.reply({ type: "redirect", ref: msg.id, url: NODE_B, node: "b" });
      setTimeout(() => this.drop(4011, "redirect"), 5);
      return;
    }
    const moved = this.url === NODE_C;
    this.reply({ type: "joined", ref: msg.id, participant: { id: "p1", role: "patient" },
      room: "r1", state: "admitted", resume: `resume-${opened.length}`, resumed: Boolean(msg.resume),
      ...(moved ? { moved: true } : {}), iceServers: [] });
    this.reply({ type: "room", participants: [{ id: "p1", role: "patient", tracks: [] }], chat: [] });
  }
  reply(obj) { setTimeout(() => this.onmessage?.({ data: JSON.stringify(obj) }), 0); }
  drop(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  close() { this.drop(1000, ""); }
}

const pcs = [];
class FakePeerConnection {
  constructor() {
    pcs.push(this);
    this.signalingState = "stable";
    this.connectionState = "new";
    this.closed = false;
  }
  createDataChannel() { return { readyState: "connecting", send() {} }; }
  getTransceivers() { return []; }
  async getStats() { return new Map(); }
  close() { this.signalingState = "closed"; this.closed = true; }
}

globalThis.WebSocket = Socket;
globalThis.RTCPeerConnection = FakePeerConnection;
globalThis.RTCRtpReceiver = { getCapabilities: () => ({ codecs: [{ mimeType: "video/VP8" }] }) };
globalThis.MediaStream = class { constructor(tracks) { this.tracks = tracks; } };
globalThis.location = { href: "http://entry.example/" };

const checks = [];
function check(what, ok, detail) {
  checks.push({ what, ok: Boolean(ok), detail });
  if (!ok) throw new Error(`${what}: ${JSON.stringify(detail)}`);
}
const tick = (ms = 20) => new Promise((r) => setTimeout(r, ms));
async function until(what, predicate, ms = 5000) {
  for (let waited = 0; !predicate(); waited += 10) {
    if (waited > ms) throw new Error(`timed out: ${what}`);
    await tick(10);
  }
}

let consult = null;
try {
  const { Consultation } = await import(process.argv[2]);
  consult = new Consultation({ url: ENTRY, token: "a.b.c" });
  const resumed = [];
  consult.addEventListener("resumed", (ev) => resumed.push(ev.detail));
  const joined = await consult.connect();
  check("the join is answered on the room's node", joined.type === "joined", joined);
  check("joined at node B after a redirect", opened.map(([u]) => u).join() === [ENTRY, NODE_B].join(), opened);
  check("the same join message went to B", opened[1][1].token === "a.b.c" && !opened[1][1].resume, opened[1][1]);
  await until("a peer connection", () => pcs.length === 1);

  // The room moves (drain deadline): pushed redirect, then close 4011.
  current.reply({ type: "redirect", url: NODE_C, node: "c", moved: true });
  await tick(5);
  current.drop(4011, "moved");
  await until("resumed at C", () => resumed.length === 1);
  const [url, join] = opened.at(-1);
  check("the resume went to C", url === NODE_C, url);
  check("with the last resume token", join.resume === "resume-2", join);
  check("resumed says moved", resumed[0].moved === true && resumed[0].rejoined === false, resumed[0]);
  await until("a fresh peer connection", () => pcs.length === 2);
  check("the old peer connection is closed", pcs[0].closed, pcs.map((p) => p.closed));

  // Node C dies: the resume fails there, and the next one goes to the entry address.
  down.add(NODE_C);
  const before = opened.length;
  current.drop(1006, "");
  await until("joined again", () => opened.length >= before + 2, 8000);
  await until("admitted again", () => consult.state === "admitted");
  await tick(20); // the `joined` and `room` replies handled
  check("back through the entry address, then redirected", opened.slice(before).map(([u]) => u).join() === [ENTRY, NODE_B].join(), opened.slice(before).map(([u]) => u));

  // A join closed with 1013 (try again later) is retried, and is no refusal: the client
  // stays in the consultation and resumes again after a later drop.
  refuseNext = 1;
  const mark = opened.length;
  current.drop(1006, "");
  await until("joined after a 1013", () => opened.length >= mark + 2 && consult.state === "admitted", 8000);
  await tick(20);
  check("1013 then joined at B", opened.slice(mark).map(([u]) => u).join() === [NODE_B, NODE_B].join(), opened.slice(mark).map(([u]) => u));
  const mark2 = opened.length;
  current.drop(1006, "");
  await until("resumed after a later drop", () => opened.length > mark2 && consult.state === "admitted", 8000);
  check("still resuming (no stale refusal)", opened.length > mark2, consult.state);
  console.log(JSON.stringify({ ok: true, checks }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, checks, error: String(e?.stack ?? e), opened: opened.map(([u, m]) => [u, m.resume ?? null]) }));
} finally {
  try { await consult?.leave(); } catch { /* closed */ }
  process.exit(0);
}

// Unit test of consult.js's chat paging (pure logic: the socket is a fake that serves a room
// of 120 chat messages the way the node does: `room` with the newest page and `chat_more`,
// `chat-history {before, limit}` with older pages). Run by tests/test_limits.py with Node;
// prints one JSON line {ok, checks, error}.
//
// Checked: `chat` starts with the room's page and `chatMore`; loadEarlierChat() puts each
// older page in front (oldest first, no duplicates, `chat` events with `earlier: true`) until
// `chatMore` is false; a resume whose page leaves a gap replaces the list.

import "./node18.mjs";
import { FakeWebSocket, sent, socket } from "./fake_socket.mjs";

const ALL = Array.from({ length: 120 }, (_, i) => ({ id: `m${i + 1}`, from: "p2", name: "N", role: "doctor", text: `t${i + 1}`, ts: i }));
const PAGE = 50;

function page(before, limit) {
  const end = before === undefined ? ALL.length : Math.max(0, Number(before.slice(1)) - 1);
  const start = Math.max(0, end - Math.min(limit ?? PAGE, PAGE));
  return { messages: ALL.slice(start, end), more: start > 0 };
}

FakeWebSocket.roomChat = () => {
  const first = page(undefined);
  return { chat: first.messages, chat_more: first.more };
};
FakeWebSocket.answer = (ws, msg) => {
  if (msg.type === "chat-history") ws.reply({ type: "chat-history", ref: msg.id, ...page(msg.before, msg.limit) });
};

class FakePeerConnection {
  constructor() { this.signalingState = "stable"; this.connectionState = "new"; }
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
const ids = (list) => list.map((m) => m.id);

let consult;
try {
  const { Consultation } = await import(process.argv[2]);
  consult = new Consultation({ url: "ws://127.0.0.1/ws", token: "a.b.c" });
  const errors = [];
  const earlier = [];
  consult.addEventListener("error", (e) => errors.push(e.detail));
  consult.addEventListener("chat", (e) => { if (e.detail.earlier) earlier.push(e.detail.message.id); });
  await consult.connect();
  for (let i = 0; i < 100 && consult.chat.length === 0; i++) await tick(5);
  check("the room's page", consult.chat.length === 50 && consult.chat[49].id === "m120", ids(consult.chat));
  check("chatMore after the room", consult.chatMore === true, consult.chatMore);

  const added = await consult.loadEarlierChat();
  check("the page before m71", ids(added)[0] === "m21" && added.length === 50, ids(added));
  check("sent with before", sent.at(-1).type === "chat-history" && sent.at(-1).before === "m71", sent.at(-1));
  await consult.loadEarlierChat({ limit: 10 });
  check("a page of 10", consult.chat.length === 110 && consult.chat[0].id === "m11", consult.chat[0]);
  while (consult.chatMore) await consult.loadEarlierChat();
  check("everything once, in order", JSON.stringify(ids(consult.chat)) === JSON.stringify(ids(ALL)), ids(consult.chat).slice(0, 5));
  check("earlier events", earlier.length === 120 - 50 && earlier.includes("m1"), earlier.length);

  // A resume whose page starts after a gap (m121..m300 said meanwhile): the page replaces the list.
  for (let i = 121; i <= 300; i++) ALL.push({ id: `m${i}`, from: "p2", name: "N", role: "doctor", text: `t${i}`, ts: i });
  const latest = page(undefined);
  socket.reply({ type: "room", participants: [{ id: "p1", role: "patient", tracks: [] }], chat: latest.messages, chat_more: latest.more });
  for (let i = 0; i < 100 && consult.chat[0]?.id !== "m251"; i++) await tick(5);
  check("a gap: the list is the new page", consult.chat.length === 50 && consult.chat[0].id === "m251", ids(consult.chat).slice(0, 3));
  check("chatMore after the gap", consult.chatMore === true, consult.chatMore);
  check("no client errors", errors.length === 0, errors);
  console.log(JSON.stringify({ ok: true, checks }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, checks, error: String(e?.stack ?? e), sent: sent.map((m) => m.type) }));
} finally {
  try { await consult?.leave(); } catch { /* closed */ }
  process.exit(0);
}

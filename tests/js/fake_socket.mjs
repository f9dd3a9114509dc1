// The node's side of the WebSocket for the client's unit tests: a fake that records what the
// client sends and answers `join` with `joined` (an admitted patient) and a `room` snapshot.
// A script sets FakeWebSocket.roomChat (the snapshot's chat fields), FakeWebSocket.iceServers
// (`joined`'s) and FakeWebSocket.answer (its replies to other messages), then installs it as
// globalThis.WebSocket.

export const sent = []; // messages the client sent on the socket
export let socket = null; // the newest socket

export class FakeWebSocket {
  static OPEN = 1;
  static roomChat = () => ({ chat: [] });
  static iceServers = [];
  static answer = (_socket, _msg) => {};

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    socket = this;
    setTimeout(() => { this.readyState = 1; this.onopen?.(); }, 0);
  }
  send(text) {
    const msg = JSON.parse(text);
    sent.push(msg);
    if (msg.type === "join") {
      this.reply({ type: "joined", ref: msg.id, participant: { id: "p1", role: "patient" },
        room: "r1", state: "admitted", resume: "resume-token",
        iceServers: FakeWebSocket.iceServers });
      this.reply({ type: "room", participants: [{ id: "p1", role: "patient", tracks: [] }],
        ...FakeWebSocket.roomChat() });
    } else {
      FakeWebSocket.answer(this, msg);
    }
  }
  reply(obj) { setTimeout(() => this.onmessage?.({ data: JSON.stringify(obj) }), 0); }
  close() { this.readyState = 3; }
}

// What a browser has and Node 18 (Debian 12's) lacks, for the client's unit tests: imported
// first by each tests/js script that loads consult.js.

// CustomEvent (the client's events): Node has it from 19 on.
globalThis.CustomEvent ??= class CustomEvent extends Event {
  constructor(type, init = {}) {
    super(type, init);
    this.detail = init.detail ?? null;
  }
};

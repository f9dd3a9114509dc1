// Browser driver of `compat run`: puppeteer-core over Debian's own browser binaries.
//
// Chromium is driven over CDP, Firefox ESR over WebDriver BiDi; puppeteer-core never
// downloads a browser (the executable is always given). The Python side (compat/driver.py)
// starts this process inside the run's network namespace, so every browser it launches
// lives there too, and talks to it in JSON lines:
//
//   stdin:  {"id": 1, "op": "launch", "browser": "b1", "engine": "chrome"|"firefox",
//            "executable": "/usr/bin/chromium", "args": [...], "prefs": {...}, "timeout": 60}
//   stdout: {"id": 1, "ok": true, "result": {...}} or {"id": 1, "ok": false, "error": "..."}
//
// Operations: launch, open (a page on a URL), eval (an async function body in the page),
// press (a key), reload, screenshot (of an element, base64 PNG), console (the page's console so far),
// closePage, close (a browser), quit. A browser that crashes or disconnects fails the
// operations that use it with the reason; the driver itself keeps serving.
import puppeteer from "puppeteer-core";
import readline from "node:readline";

const browsers = new Map(); // id -> {browser, engine, version, gone}
const pages = new Map(); // id -> {page, browser, console: []}

function withTimeout(promise, seconds, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: timed out after ${seconds}s`)), seconds * 1000);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

function browserOf(id) {
  const b = browsers.get(id);
  if (!b) throw new Error(`no browser ${id}`);
  if (b.gone) throw new Error(`browser ${id} is gone: ${b.gone}`);
  return b;
}

function pageOf(id) {
  const p = pages.get(id);
  if (!p) throw new Error(`no page ${id}`);
  const b = browsers.get(p.browser);
  if (b?.gone) throw new Error(`browser ${p.browser} is gone: ${b.gone}`);
  if (p.crashed) throw new Error(`page ${id} crashed: ${p.crashed}`);
  return p;
}

const ops = {
  async launch(msg) {
    const opts = {
      executablePath: msg.executable,
      headless: true,
      args: msg.args ?? [],
      timeout: (msg.timeout ?? 60) * 1000,
      protocolTimeout: (msg.timeout ?? 60) * 1000,
      handleSIGINT: false,
      handleSIGTERM: false,
      handleSIGHUP: false,
    };
    if (msg.engine === "firefox") {
      opts.browser = "firefox";
      opts.protocol = "webDriverBiDi";
      opts.extraPrefsFirefox = msg.prefs ?? {};
    } else {
      opts.browser = "chrome";
      opts.headless = msg.headless ?? "new";
      opts.ignoreDefaultArgs = ["--enable-automation"];
    }
    const browser = await puppeteer.launch(opts);
    const entry = { browser, engine: msg.engine, version: await browser.version(), gone: null };
    browser.on("disconnected", () => { entry.gone = entry.gone ?? "disconnected (crashed or killed)"; });
    browsers.set(msg.browser, entry);
    return { version: entry.version, userAgent: await browser.userAgent() };
  },

  async open(msg) {
    const b = browserOf(msg.browser);
    const page = await b.browser.newPage();
    const entry = { page, browser: msg.browser, console: [], crashed: null };
    pages.set(msg.page, entry);
    page.on("console", (m) => entry.console.push(`${m.type()}: ${m.text()}`.slice(0, 2000)));
    page.on("pageerror", (e) => entry.console.push(`pageerror: ${e?.message ?? e}`.slice(0, 2000)));
    page.on("error", (e) => { entry.crashed = String(e?.message ?? e); });
    if (msg.viewport) await page.setViewport(msg.viewport);
    await page.goto(msg.url, { waitUntil: "load", timeout: (msg.timeout ?? 30) * 1000 });
    return { url: page.url() };
  },

  async eval(msg) {
    const p = pageOf(msg.page);
    // The body runs as an async function in the page; its result must be JSON-serialisable.
    const fn = `(async () => { ${msg.body} })()`;
    const value = await p.page.evaluate(fn);
    return { value: value === undefined ? null : value };
  },

  async press(msg) {
    // One key (a puppeteer key name: "Enter", "Tab", " ") to the page's focused element.
    await pageOf(msg.page).page.keyboard.press(msg.key);
    return {};
  },

  async reload(msg) {
    const p = pageOf(msg.page);
    await p.page.reload({ waitUntil: "load", timeout: (msg.timeout ?? 30) * 1000 });
    return {};
  },

  async screenshot(msg) {
    const p = pageOf(msg.page);
    const el = msg.selector ? await p.page.$(msg.selector) : null;
    if (msg.selector && !el) throw new Error(`no element ${msg.selector}`);
    const data = el
      ? await el.screenshot({ encoding: "base64", type: "png" })
      : await p.page.screenshot({ encoding: "base64", type: "png" });
    return { png: data };
  },

  async console(msg) {
    const p = pages.get(msg.page);
    return { lines: p ? p.console.slice(-(msg.last ?? 50)) : [] };
  },

  async closePage(msg) {
    const p = pages.get(msg.page);
    pages.delete(msg.page);
    if (p) await p.page.close().catch(() => {});
    return {};
  },

  async close(msg) {
    const b = browsers.get(msg.browser);
    browsers.delete(msg.browser);
    for (const [id, p] of pages) if (p.browser === msg.browser) pages.delete(id);
    if (b && !b.gone) await b.browser.close().catch(() => b.browser.process()?.kill("SIGKILL"));
    return {};
  },

  async quit() {
    await closeAll();
    setTimeout(() => process.exit(0), 10);
    return {};
  },
};

async function closeAll() {
  const all = [...browsers.values()];
  browsers.clear();
  pages.clear();
  await Promise.all(all.map(async (b) => {
    try {
      await withTimeout(b.browser.close(), 10, "close");
    } catch {
      b.browser.process()?.kill("SIGKILL");
    }
  }));
}

function reply(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

async function handle(line) {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch {
    return reply({ id: null, ok: false, error: "bad json" });
  }
  const op = ops[msg.op];
  if (!op) return reply({ id: msg.id, ok: false, error: `unknown op ${msg.op}` });
  try {
    const result = await withTimeout(op(msg), msg.timeout ?? 60, msg.op);
    reply({ id: msg.id, ok: true, result });
  } catch (e) {
    reply({ id: msg.id, ok: false, error: String(e?.message ?? e).slice(0, 4000) });
  }
}

for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => { closeAll().finally(() => process.exit(1)); });
}
const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => { if (line.trim()) handle(line); });
rl.on("close", () => { closeAll().finally(() => process.exit(0)); });
reply({ id: 0, ok: true, result: { ready: true, puppeteer: "puppeteer-core" } });

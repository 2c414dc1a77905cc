// The browser SDK against a real gateway, under Node's test runner (run by test_sdk_node.py,
// which starts the stack and passes ACKWIRE_URL and ACKWIRE_TOKEN).
import assert from "node:assert/strict";
import net from "node:net";
import { after, test } from "node:test";

import {
  AckwireClient,
  backoffDelay,
  closeAction,
  SeenIds,
  retryMs,
  tokenExpiry,
} from "../../services/ackwire/gateway/web/ackwire.js";

const URL = process.env.ACKWIRE_URL;
const TOKEN = process.env.ACKWIRE_TOKEN;
const WAIT_MS = 15_000;

/** sessionStorage as a page has it: what survives a refresh. */
class MemoryStorage {
  items = new Map();
  getItem(key) {
    return this.items.get(key) ?? null;
  }
  setItem(key, value) {
    this.items.set(key, String(value));
  }
  removeItem(key) {
    this.items.delete(key);
  }
}

/** A TCP path to the gateway that a test can cut, as a network does: every connection dies. */
class CuttableProxy {
  sockets = new Set();
  async start(target) {
    const { hostname, port } = new globalThis.URL(target);
    this.server = net.createServer((client) => {
      const upstream = net.connect(Number(port), hostname);
      for (const [a, b] of [[client, upstream], [upstream, client]]) {
        this.sockets.add(a);
        a.on("error", () => b.destroy());
        a.on("close", () => (this.sockets.delete(a), b.destroy()));
        a.pipe(b);
      }
    });
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `ws://127.0.0.1:${this.server.address().port}`;
    return this;
  }
  cut() {
    for (const socket of this.sockets) socket.destroy();
  }
  close() {
    this.cut();
    this.server.close();
  }
}

const cleanups = [];
after(async () => {
  for (const cleanup of cleanups) await cleanup();
});

function client(options) {
  const made = new AckwireClient({ url: URL, token: TOKEN, storage: new MemoryStorage(), ...options });
  cleanups.push(() => made.close());
  return made;
}

async function proxy() {
  const made = await new CuttableProxy().start(URL);
  cleanups.push(() => made.close());
  return made;
}

/** Resolves once `predicate()` holds, checked at each of the client's state changes. */
function until(c, predicate, what) {
  return new Promise((resolve, reject) => {
    if (predicate()) return resolve();
    const timer = setTimeout(() => (off(), reject(new Error(`no ${what} within ${WAIT_MS} ms`))), WAIT_MS);
    const off = c.on("state", () => {
      if (predicate()) (clearTimeout(timer), off(), resolve());
    });
  });
}

function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${WAIT_MS} ms`)), WAIT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// -- the rules alone -------------------------------------------------------------------

test("the close-code table: 1001 at once, 4409 stops, 4401 a fresh token, 4403 a new session", () => {
  assert.deepEqual(closeAction(1001), { action: "now" });
  assert.deepEqual(closeAction(4409), { action: "stop", reason: "taken_over" });
  assert.deepEqual(closeAction(4401), { action: "token" });
  assert.deepEqual(closeAction(4403), { action: "new_session" });
  for (const code of [1006, 1011, 4001, 4429]) assert.deepEqual(closeAction(code), { action: "backoff" });
});

test("back-off is jittered, grows, and is capped", () => {
  assert.equal(backoffDelay(0, 500, 30_000, () => 0.999), 499);
  assert.equal(backoffDelay(3, 500, 30_000, () => 0.5), 2_000);
  assert.equal(backoffDelay(40, 500, 30_000, () => 0.999), 29_970);
  assert.equal(backoffDelay(5, 500, 30_000, () => 0), 0);
});

test("a refused submit or subscribe goes again when it may: rate_limited, unavailable, a code unknown here", () => {
  assert.equal(retryMs("rate_limited", 0, () => 0.5), 187.5);
  assert.equal(retryMs("unavailable", 3, () => 0.999), 1999);
  assert.equal(retryMs("quota_exceeded", 0, () => 0), 125); // newer than this SDK
  assert.equal(retryMs("unavailable", 5), null); // its retries are spent
  for (const code of ["no_such_kind", "bad_payload", "bad_frame"]) assert.equal(retryMs(code, 0), null);
});

test("submits past the session's rate limit are retried, and every job runs once", async () => {
  const c = client().start();
  const jobs = Array.from({ length: 50 }, (_, i) => c.run("echo", { i })); // the burst is 40
  assert.deepEqual(await within(Promise.all(jobs), "every job"), Array.from({ length: 50 }, (_, i) => ({ i })));
});

test("seen ids are bounded, the oldest forgotten first", () => {
  const seen = new SeenIds(2, ["a"]);
  seen.add("b");
  seen.add("c");
  assert.deepEqual(seen.toJSON(), ["b", "c"]);
  assert.equal(seen.has("a"), false);
});

test("a token's exp is read from the JWT", () => {
  assert.equal(typeof tokenExpiry(TOKEN), "number");
  assert.equal(tokenExpiry("not a token"), null);
});

// -- against the gateway -----------------------------------------------------------------

test("a job's result comes exactly once, after its progress", async () => {
  const c = client().start();
  const stray = [];
  c.on("delivery", (d) => stray.push(d));
  const progress = [];
  const results = [];
  const job = c.submit("sleep", { seconds: 1 }, { onProgress: (percent) => progress.push(percent) });
  job.result.then((data) => results.push(data));
  const jobId = await within(job.accepted, "accepted");
  assert.match(jobId, /^j-/);
  assert.deepEqual(await within(job.result, "result"), { slept: 1 });
  assert.deepEqual(await within(c.run("echo", { a: [1, "二"] }), "echo"), { a: [1, "二"] });
  assert.deepEqual(results, [{ slept: 1 }]);
  assert.ok(progress.length >= 1, "at least one progress delivery");
  assert.deepEqual(stray, [], "no delivery of these jobs reached the catch-all");
  await assert.rejects(c.run("no-such-kind", {}), { code: "no_such_kind" });
  await assert.rejects(c.run("fail", { message: "on purpose" }), { name: "JobError", code: "failed" });
});

test("the socket cut mid-job: the client resumes the session and the result comes once", async () => {
  const path = await proxy();
  const c = client({ url: path.url, backoffInitialMs: 100 });
  c.start();
  await until(c, () => c.state === "open", "welcome");
  const session = c.sessionId;
  const job = c.submit("sleep", { seconds: 2 });
  await within(job.accepted, "accepted");
  path.cut();
  await until(c, () => c.state !== "open", "noticed cut");
  const queued = c.run("echo", { queued: true }); // submitted while disconnected
  await until(c, () => c.state === "open", "resumed welcome");
  assert.equal(c.sessionId, session, "the same session, resumed");
  assert.equal(c.stats.resumes, 1);
  assert.deepEqual(await within(job.result, "result"), { slept: 2 });
  assert.deepEqual(await within(queued, "queued submit"), { queued: true });
});

test("an ack the cut socket could not carry is kept and sent after the resumed welcome", async () => {
  const path = await proxy();
  const storage = new MemoryStorage();
  const c = client({ url: path.url, storage, backoffInitialMs: 100 });
  c.start();
  let release;
  const handled = new Promise((resolve) => (release = resolve));
  const job = c.submit("sleep", { seconds: 2 }, {
    onProgress: async () => {
      if (release === null) return;
      release();
      release = null;
      // The handler is still running when the socket dies: its ack has nowhere to go.
      path.cut();
      await until(c, () => c.state !== "open", "noticed cut");
    },
  });
  const jobId = await within(job.accepted, "accepted");
  await within(handled, "first progress");
  await within(job.result, "result");
  assert.ok(c.stats.acksKept >= 1, "an ack was kept");
  assert.ok(c.stats.keptAcksSent >= 1, "and sent after the resumed welcome");

  // A client that remembers only the session sees nothing of that job again: every
  // delivery of it was acked. Owed messages come oldest first, so a fresh job's result
  // arriving first shows none is left.
  const { session } = JSON.parse(storage.getItem("ackwire:default"));
  await c.close();
  const fresh = new MemoryStorage();
  fresh.setItem("ackwire:default", JSON.stringify({ session }));
  const again = client({ storage: fresh });
  const seen = [];
  again.on("delivery", (d) => seen.push(d));
  again.start();
  assert.deepEqual(await within(again.run("echo", { after: true }), "echo"), { after: true });
  assert.equal(again.stats.resumes, 1);
  assert.deepEqual(seen.filter((d) => d.job_id === jobId), []);
});

test("a page refresh resumes the session and shows nothing twice (dedupe by id)", async () => {
  const path = await proxy();
  const storage = new MemoryStorage();
  const first = client({ url: path.url, storage });
  first.start();
  let cutDone;
  const cut = new Promise((resolve) => (cutDone = resolve));
  const job = first.submit("sleep", { seconds: 2 }, {
    onProgress: () => {
      if (cutDone === null) return;
      path.cut(); // the ack of this progress never reaches the gateway
      cutDone();
      cutDone = null;
    },
  });
  job.result.catch(() => {}); // closed below, before its result: its end comes after the refresh
  const jobId = await within(job.accepted, "accepted");
  await within(cut, "first progress handled");
  await first.close(); // the page goes away; its storage stays
  // As if the ack had been lost on the wire: the gateway must send that progress again.
  const saved = JSON.parse(storage.getItem("ackwire:default"));
  assert.ok(saved.seen.length >= 1, "the handled delivery's id was stored");
  storage.setItem("ackwire:default", JSON.stringify({ ...saved, acks: [] }));

  const reloaded = client({ storage });
  const shown = [];
  reloaded.on("delivery", (d) => shown.push(d));
  const ended = new Promise((resolve) =>
    reloaded.on("delivery", (d) => d.kind === "result" && resolve()),
  );
  reloaded.start();
  await within(ended, "the job's result after the refresh");
  assert.equal(reloaded.stats.resumes, 1);
  assert.ok(reloaded.stats.duplicates >= 1, "the redelivered progress was dropped");
  const ofJob = shown.filter((d) => d.job_id === jobId);
  assert.ok(ofJob.every((d) => !saved.seen.includes(d.id)), "nothing handled before is shown");
  assert.equal(ofJob.filter((d) => d.kind === "result").length, 1);
  assert.equal(ofJob.find((d) => d.kind === "result").jobKind, "sleep");
});

test("one client per page: every component asking gets the same one", async () => {
  const options = { url: URL, token: TOKEN, storage: new MemoryStorage(), key: "page" };
  const a = AckwireClient.shared(options);
  cleanups.push(() => a.close());
  const b = AckwireClient.shared(options);
  assert.equal(b, a);
  assert.deepEqual(await within(b.run("echo", { n: 1 }), "echo"), { n: 1 });
  assert.equal(a.stats.connects, 1); // one socket for both askers
});

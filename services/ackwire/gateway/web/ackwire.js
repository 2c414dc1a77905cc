// The ackwire browser SDK: one plain ES module, no build step (docs/sdk-browser.md).
//
// It speaks ackwire.v1 (docs/protocol.md) as a careful client does, so an app never
// reconnects, resumes, dedupes or acks by hand: it resumes by itself with jittered back-off,
// keeps the acks it could not send, dedupes deliveries by `id` (kept in sessionStorage
// with the resume token, so a page refresh resumes and shows nothing twice), acks only
// after the app's handler returned, refreshes the token ahead of `exp`, queues submits
// while disconnected, and says when a session could not be resumed.

export const SUBPROTOCOL = "ackwire.v1";
export const VERSION = "0.1.0";

/** Every error the SDK hands an app: `code` says which (see ackwire.d.ts). */
export class AckwireError extends Error {
  constructor(code, message, details = {}) {
    super(message);
    this.name = "AckwireError";
    this.code = code;
    Object.assign(this, details);
  }
}

/** A job that ended in a `deliver` of kind `error` (`code` is `failed`, `no_capacity`, …). */
export class JobError extends AckwireError {
  constructor(code, message, jobId) {
    super(code, message, { jobId });
    this.name = "JobError";
  }
}

const DEFAULTS = {
  backoffInitialMs: 500,
  backoffMaxMs: 30_000,
  connectTimeoutMs: 10_000,
  submitTimeoutMs: 30_000,
  maxQueuedSubmits: 100,
  dedupeLimit: 2_000,
  // The gateway keeps 1,024 acks ahead per connection; more would be forgotten there.
  maxKeptAcks: 1_024,
  maxHeldDeliveries: 256,
  refreshAheadS: 60,
  pauseWhenHiddenMs: 60_000,
  probeTimeoutMs: 3_000,
};

// -- pure rules: no sockets, no timers (tested alone) -------------------------------

/** The codes this SDK knows; docs/protocol.md: "treat an unknown code like `unavailable`". */
const ERROR_CODES = new Set([
  "bad_frame", "no_such_kind", "bad_payload", "rate_limited", "unavailable",
  "bad_token", "forbidden_topic", "too_many_topics", "topic_gap",
]);
const RETRIES = 5;
const RETRY_FIRST_MS = 250;

/**
 * How long before a submit or subscribe refused with `code` goes again (a submit with its
 * key, which makes it the same job), after `refused` earlier refusals; `null`: it fails
 * with the refusal. `random()` is in [0, 1): the wait is jittered between half and all
 * of its doubling.
 */
export function retryMs(code, refused, random = Math.random) {
  const retryable = code === "rate_limited" || code === "unavailable" || !ERROR_CODES.has(code);
  if (!retryable || refused >= RETRIES) return null;
  return RETRY_FIRST_MS * 2 ** refused * (0.5 + random() / 2);
}

/**
 * What the contract's close-code table says a client does (docs/protocol.md, 7).
 * `now`: reconnect at once (to the next gateway); `backoff`: after a jittered wait;
 * `new_session`: start over without `resume`; `token`: get a fresh token, then resume;
 * `stop`: terminal, with `reason`.
 */
export function closeAction(code) {
  switch (code) {
    case 1000:
      return { action: "stop", reason: "ended" };
    case 1001:
      return { action: "now" };
    case 4401:
      return { action: "token" };
    case 4403:
      return { action: "new_session" };
    case 4409:
      return { action: "stop", reason: "taken_over" };
    default: // 1006 (cut), 1008, 1009, 1011, 4001, 4429 and codes this SDK does not know
      return { action: "backoff" };
  }
}

/** Full-jitter exponential back-off: a wait in [0, min(max, initial * 2^attempt)). */
export function backoffDelay(attempt, initialMs, maxMs, random = Math.random) {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** A JWT's `exp` (seconds since the epoch), or null when it has none or is unreadable. */
export function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return typeof claims.exp === "number" ? claims.exp : null;
  } catch {
    return null;
  }
}

/** Delivery ids already handled, oldest forgotten first past `limit`. */
export class SeenIds {
  constructor(limit, ids = []) {
    this.limit = limit;
    this.ids = new Set(ids.slice(-limit));
  }
  has(id) {
    return this.ids.has(id);
  }
  add(id) {
    this.ids.delete(id);
    this.ids.add(id);
    while (this.ids.size > this.limit) this.ids.delete(this.ids.values().next().value);
  }
  toJSON() {
    return [...this.ids];
  }
}

// -- the client ---------------------------------------------------------------------

const shared = new Map();
const OPEN = 1; // WebSocket.OPEN, also where no WebSocket global is defined yet

export class AckwireClient {
  /**
   * One connection per page: every component asking with the same `key` gets the same
   * client (and so the same WebSocket). The first caller's options win.
   */
  static shared(options) {
    const key = options.key ?? "default";
    let client = shared.get(key);
    if (client === undefined || client.state === "closed") {
      client = new AckwireClient(options);
      shared.set(key, client);
      client.start();
    }
    return client;
  }

  #o;
  #urls;
  #urlIndex = 0;
  #tokenSource;
  #token = null;
  #tokenStale = false;
  #storage;
  #storageKey;
  #WebSocket;
  #listeners = new Map();
  #state = "idle";
  #closedReason = null;
  #ws = null;
  #welcomed = false;
  #welcome = null;
  #session = null; // {session_id, resume_token, last_seq}
  #attempt = 0;
  #timers = {};
  #lastHeard = 0;
  #seen;
  #keptAcks = new Set(); // acks owed to the gateway, to send once welcomed
  #acksSinceProbe = []; // sent on this connection, not yet followed by a pong
  #acksBeforePong = [];
  #chain = Promise.resolve();
  #jobs = new Map(); // ref -> job
  #jobsById = new Map();
  #held = new Map(); // id -> deliver frame of a job whose `accepted` has not come yet
  #restoredJobs = new Map(); // jobId -> kind: accepted before a page refresh
  #subs = new Map(); // topic -> {handlers:Set, confirmed:boolean, ref}
  #pendingRefs = new Map(); // ref -> what a subscribe/unsubscribe/refresh answer settles
  #refCounter = 0;
  #refPrefix = Math.random().toString(36).slice(2, 8);
  #paused = { hidden: false, offline: false };
  #detachPage = () => {};
  stats = { duplicates: 0, acksSent: 0, acksKept: 0, keptAcksSent: 0, resumes: 0, connects: 0 };

  constructor(options) {
    if (!options || (!options.url && !options.urls)) {
      throw new AckwireError("bad_options", "AckwireClient needs `url` (or `urls`)");
    }
    if (!options.token) throw new AckwireError("bad_options", "AckwireClient needs `token`");
    this.#o = { ...DEFAULTS, ...options };
    this.#urls = [...new Set([].concat(options.urls ?? [], options.url ?? []))];
    this.#tokenSource = options.token;
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.#storage =
      options.storage === undefined ? (globalThis.sessionStorage ?? null) : options.storage;
    this.#storageKey = `ackwire:${options.key ?? "default"}`;
    const saved = this.#load();
    this.#session = saved.session ?? null;
    this.#seen = new SeenIds(this.#o.dedupeLimit, saved.seen ?? []);
    for (const seq of saved.acks ?? []) this.#keptAcks.add(seq);
    for (const [jobId, kind] of saved.jobs ?? []) this.#restoredJobs.set(jobId, kind);
  }

  // -- what an app reads ---------------------------------------------------------

  /** idle | connecting | open | waiting | paused | closed */
  get state() {
    return this.#state;
  }
  /** Why the client is `closed`: ended (bye), taken_over, unauthenticated or closed. */
  get closedReason() {
    return this.#closedReason;
  }
  get gateway() {
    return this.#welcome?.gateway ?? null;
  }
  get sessionId() {
    return this.#session?.session_id ?? null;
  }
  /** Jobs submitted and not yet ended: `{ref, kind, jobId}` each. */
  get jobsInFlight() {
    const live = [...this.#jobs.values()]
      .filter((job) => job.sent || job.jobId)
      .map((job) => ({ ref: job.ref, kind: job.kind, jobId: job.jobId }));
    const restored = [...this.#restoredJobs].map(([jobId, kind]) => ({ ref: null, kind, jobId }));
    return [...live, ...restored];
  }

  /**
   * `state` ({state, gateway, sessionId}), `welcome` (the frame), `session-lost`
   * ({reason, jobs}), `delivery` (a deliver no job of this page claims: a `message`, or a
   * job from before a refresh; acked once every listener returned), `error` (an
   * AckwireError the app may want to show). Returns a function that removes the listener.
   */
  on(event, listener) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(listener);
    return () => this.#listeners.get(event)?.delete(listener);
  }

  // -- lifecycle -----------------------------------------------------------------

  start() {
    if (this.#state !== "idle") return this;
    this.#detachPage = this.#watchPage();
    this.#connect();
    return this;
  }

  /** Connect again now: after `unauthenticated` (a new token), or to skip a back-off. */
  reconnect() {
    if (this.#closedReason === "ended") return;
    this.#tokenStale = true;
    if (this.#state === "closed") {
      this.#closedReason = null;
      this.#state = "idle";
    }
    if (this.#state === "idle") return void this.start();
    this.#detach();
    this.#attempt = 0;
    this.#connect();
  }

  /**
   * Stop. With `{bye: true}` the session ends for good (protocol.md, 7); without, it
   * stays resumable (a later client with the same storage resumes it).
   */
  async close({ bye = false } = {}) {
    if (bye && this.#welcomed) {
      const ws = this.#ws;
      const closed = new Promise((resolve) => ws.addEventListener("close", resolve));
      this.#sendRaw({ type: "bye" });
      await Promise.race([closed, new Promise((r) => setTimeout(r, 5_000))]);
    }
    if (bye) this.#storage?.removeItem(this.#storageKey);
    this.#terminate(bye ? "ended" : "closed");
  }

  // -- jobs ----------------------------------------------------------------------

  /** Submit and wait for the result's `data`; rejects with JobError or AckwireError. */
  run(kind, payload, options = {}) {
    return this.submit(kind, payload, options).result;
  }

  /**
   * Submit a job: `{ref, accepted, result, onProgress(fn)}`. `accepted` resolves to the
   * job id once the gateway stored it; `result` to the result's `data`. A submit made
   * while disconnected waits (at most `maxQueuedSubmits` of them) until `timeoutMs`
   * for its `accepted`, then rejects with code `timeout`.
   */
  submit(kind, payload, { timeoutMs, idempotencyKey, onProgress } = {}) {
    const ref = this.#nextRef();
    const job = {
      ref,
      kind,
      frame: {
        type: "submit",
        ref,
        kind,
        payload: payload ?? {},
        idempotency_key: idempotencyKey ?? `${ref}-${Math.random().toString(36).slice(2)}`,
      },
      sent: false,
      jobId: null,
      progress: new Set(onProgress ? [onProgress] : []),
    };
    job.accepted = new Promise((resolve, reject) => {
      job.resolveAccepted = resolve;
      job.rejectAccepted = reject;
    });
    job.result = new Promise((resolve, reject) => {
      job.resolveResult = resolve;
      job.rejectResult = reject;
    });
    job.accepted.catch(() => {}); // the same failure reaches `result`; one is enough
    const handle = {
      ref,
      accepted: job.accepted,
      result: job.result,
      onProgress: (fn) => (job.progress.add(fn), handle),
    };
    const unsent = [...this.#jobs.values()].filter((j) => !j.sent).length;
    if (this.#state === "closed") {
      this.#failJob(job, this.#closedError());
    } else if (unsent >= this.#o.maxQueuedSubmits) {
      this.#failJob(job, new AckwireError("queue_full", "too many submits waiting to be sent"));
    } else if (this.#welcomed && this.#tooLarge(job.frame)) {
      this.#failJob(job, new AckwireError("frame_too_large", "the submit is larger than the gateway accepts"));
    } else {
      this.#jobs.set(ref, job);
      const timeout = timeoutMs ?? this.#o.submitTimeoutMs;
      job.deadline = setTimeout(() => {
        if (job.jobId === null) this.#endJob(job, new AckwireError("timeout", `no \`accepted\` within ${timeout} ms`));
      }, timeout);
      if (this.#welcomed) this.#sendSubmit(job);
    }
    return handle;
  }

  // -- topics --------------------------------------------------------------------

  /**
   * Events of `topic`: its snapshot first (`snapshot: true`), then live ones; restored
   * after every resume. `onEvent(event)`; `onError(AckwireError)` for `forbidden_topic`
   * (the subscription is over), `topic_gap` (events may be missing; it goes on) and others.
   * Returns `{unsubscribe()}`. Components subscribing to one topic share one subscription.
   */
  subscribe(topic, onEvent, onError = () => {}) {
    const listener = { onEvent, onError };
    let sub = this.#subs.get(topic);
    if (sub === undefined) {
      sub = { listeners: new Set(), confirmed: false };
      this.#subs.set(topic, sub);
      if (this.#welcomed) this.#sendSubscribe(topic, sub);
    }
    sub.listeners.add(listener);
    return {
      unsubscribe: () => {
        sub.listeners.delete(listener);
        if (sub.listeners.size > 0 || this.#subs.get(topic) !== sub) return;
        this.#subs.delete(topic);
        if (this.#welcomed) this.#sendRaw({ type: "unsubscribe", ref: this.#nextRef(), topic });
      },
    };
  }

  // -- connecting ----------------------------------------------------------------

  async #connect() {
    if (this.#state === "closed") return;
    this.#clearTimer("retry");
    if (this.#isPaused()) return this.#setState("paused");
    const attempt = Symbol("attempt");
    this.#ws = attempt; // a placeholder, so that a stale attempt can tell it is stale
    this.#setState("connecting");
    let token;
    try {
      token = await this.#freshToken();
    } catch (error) {
      if (this.#ws !== attempt) return;
      if (error.code === "unauthenticated") return this.#terminate("unauthenticated", error);
      this.#emit("error", error);
      return this.#retry({ action: "backoff" });
    }
    if (this.#ws !== attempt) return; // paused, closed or restarted meanwhile
    const url = this.#urls[this.#urlIndex % this.#urls.length];
    let ws;
    try {
      ws = new this.#WebSocket(url, [SUBPROTOCOL]);
    } catch (error) {
      this.#emit("error", new AckwireError("bad_url", `cannot open ${url}: ${error.message}`));
      return this.#retry({ action: "backoff" });
    }
    this.#ws = ws;
    this.#welcomed = false;
    this.stats.connects += 1;
    const current = () => this.#ws === ws;
    ws.onopen = () => current() && this.#sendHello(token);
    ws.onmessage = (event) => current() && this.#onText(event.data);
    ws.onclose = (event) => current() && this.#onGone(event.code, event.reason);
    ws.onerror = () => {}; // a `close` always follows
    this.#setTimer("connect", this.#o.connectTimeoutMs, () => current() && this.#onGone(4000, "no welcome in time"));
  }

  async #freshToken() {
    if (this.#token !== null && !this.#tokenStale) return this.#token;
    const source = this.#tokenSource;
    const token = typeof source === "function" ? await source() : source;
    if (typeof token !== "string" || token === "") {
      throw new AckwireError("unauthenticated", "the token callback gave no token");
    }
    const exp = tokenExpiry(token);
    if (exp !== null && exp * 1000 <= Date.now()) {
      throw new AckwireError("unauthenticated", "the token has expired: a fresh one is needed");
    }
    this.#token = token;
    this.#tokenStale = false;
    return token;
  }

  #sendHello(token) {
    const hello = { type: "hello", token, client: { name: "ackwire-js", version: VERSION } };
    if (this.#session) hello.resume = { ...this.#session };
    this.#sendRaw(hello);
  }

  #onGone(code, reason) {
    const wasWelcomed = this.#welcomed;
    this.#detach();
    const what = closeAction(code);
    if (code === 4401) {
      this.#emit("error", new AckwireError("unauthenticated", reason || "not authenticated"));
    } else if (code === 1008 || code === 1009) {
      this.#emit("error", new AckwireError("bad_frame", `the gateway closed ${code}: ${reason}`));
    }
    if (what.action === "stop") return this.#terminate(what.reason);
    if (!wasWelcomed) this.#urlIndex += 1; // that gateway is away: try the next
    this.#retry(what);
  }

  #retry(what) {
    if (what.action === "token") {
      if (typeof this.#tokenSource !== "function") {
        return this.#terminate("unauthenticated", new AckwireError("unauthenticated", "the token was refused and no token callback was given"));
      }
      this.#tokenStale = true;
    }
    if (what.action === "new_session") this.#sessionLost("refused");
    if (what.action === "now" || what.action === "new_session") {
      this.#urlIndex += what.action === "now" ? 1 : 0; // a draining gateway: go elsewhere
      this.#attempt = 0;
      return this.#connect();
    }
    const delay = backoffDelay(this.#attempt, this.#o.backoffInitialMs, this.#o.backoffMaxMs);
    this.#attempt += 1;
    this.#setState("waiting");
    this.#setTimer("retry", delay, () => this.#connect());
  }

  /** Forget the socket (stale events are ignored), keeping what it could not confirm. */
  #detach() {
    const ws = this.#ws;
    this.#ws = null;
    this.#welcomed = false;
    for (const name of ["connect", "ping", "probe", "refresh"]) this.#clearTimer(name);
    for (const seq of [...this.#acksBeforePong, ...this.#acksSinceProbe]) this.#keepAck(seq);
    this.#acksBeforePong = [];
    this.#acksSinceProbe = [];
    if (ws && typeof ws === "object") {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close(1000, "client closing");
      } catch {
        // already closing
      }
    }
  }

  #terminate(reason, error) {
    this.#detach();
    this.#clearTimer("retry");
    this.#closedReason = reason;
    this.#detachPage();
    this.#detachPage = () => {};
    const failure = error ?? this.#closedError();
    for (const job of [...this.#jobs.values()]) this.#endJob(job, failure);
    this.#setState("closed");
    if (error) this.#emit("error", error);
  }

  #closedError() {
    const reason = this.#closedReason ?? "closed";
    const text = {
      taken_over: "another connection took this session over (4409)",
      unauthenticated: "not authenticated: a fresh token is needed",
      ended: "the session has ended",
      closed: "the client is closed",
    };
    return new AckwireError(reason, text[reason] ?? reason);
  }

  // -- frames in -----------------------------------------------------------------

  #onText(text) {
    this.#lastHeard = Date.now();
    this.#clearTimer("probe");
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return this.#emit("error", new AckwireError("bad_frame", "the gateway sent text that is not JSON"));
    }
    switch (frame?.type) {
      case "welcome":
        return this.#onWelcome(frame);
      case "deliver":
        return this.#onDeliver(frame);
      case "accepted":
        return this.#onAccepted(frame);
      case "event":
        return this.#onEvent(frame);
      case "subscribed":
      case "unsubscribed":
      case "refreshed":
        return this.#settleRef(frame.ref, frame);
      case "pong":
        this.#acksBeforePong = []; // every ack sent before its ping was read by the gateway
        return;
      case "error":
        return this.#onError(frame);
      default:
        return; // newer frame types are ignored, as the gateway ignores unknown fields
    }
  }

  #onWelcome(welcome) {
    this.#clearTimer("connect");
    const askedResume = this.#session !== null;
    if (askedResume && !welcome.resumed) this.#sessionLost(welcome.reason);
    if (welcome.resumed) this.stats.resumes += 1;
    this.#session = {
      session_id: welcome.session_id,
      resume_token: welcome.resume_token,
      last_seq: this.#session?.last_seq ?? 0,
    };
    this.#welcome = welcome;
    this.#welcomed = true;
    this.#attempt = 0;
    // Acks first: the gateway honours an ack of a message it has not sent yet.
    for (const seq of this.#keptAcks) {
      this.#sendAck(seq);
      this.stats.keptAcksSent += 1;
    }
    this.#keptAcks.clear();
    this.#save();
    for (const job of this.#jobs.values()) {
      if (job.jobId === null) this.#sendSubmit(job); // same ref and key: the same job
    }
    for (const [topic, sub] of this.#subs) {
      // A resumed session has its subscriptions back without asking; one not yet
      // confirmed may not have been recorded, and asking again is harmless.
      if (!welcome.resumed || !sub.confirmed) this.#sendSubscribe(topic, sub);
    }
    this.#startHeartbeat(welcome.heartbeat_s);
    this.#scheduleRefresh();
    this.#setState("open");
    this.#emit("welcome", welcome);
  }

  /** The session asked for is gone: say so, with the jobs it can no longer vouch for. */
  #sessionLost(reason) {
    const jobs = this.jobsInFlight;
    this.#session = null;
    this.#seen = new SeenIds(this.#o.dedupeLimit);
    this.#keptAcks.clear();
    this.#held.clear();
    this.#restoredJobs.clear();
    for (const sub of this.#subs.values()) sub.confirmed = false;
    const error = new AckwireError("session_lost", `the session could not be resumed (${reason})`, { reason });
    for (const job of [...this.#jobs.values()]) {
      if (job.sent || job.jobId) this.#endJob(job, error);
    }
    this.#save();
    this.#emit("session-lost", { reason, jobs });
  }

  #onDeliver(frame) {
    // One at a time, in the order they came: an app sees deliveries in `seq` order.
    this.#chain = this.#chain.then(() => this.#handleDeliver(frame));
  }

  async #handleDeliver(frame) {
    if (this.#seen.has(frame.id)) {
      this.stats.duplicates += 1;
      return this.#ack(frame.seq);
    }
    const job = frame.job_id ? this.#jobsById.get(frame.job_id) : undefined;
    if (job === undefined && frame.job_id && this.#awaitingAccepted() && !this.#restoredJobs.has(frame.job_id)) {
      // Possibly a job of ours whose `accepted` is still on its way: wait for it (bounded).
      if (this.#held.size < this.#o.maxHeldDeliveries || this.#held.has(frame.id)) {
        this.#held.set(frame.id, frame);
        return;
      }
    }
    try {
      const handled = job ? await this.#toJob(job, frame) : await this.#toListeners(frame);
      if (!handled) return; // nobody took it: unacked, it comes again
    } catch (error) {
      // Not handled: not acked, so it comes again (after ack_wait, or on resume).
      return this.#emit("error", new AckwireError("handler_failed", `a delivery handler threw: ${error?.message ?? error}`, { cause: error }));
    }
    this.#seen.add(frame.id);
    if (this.#session && frame.seq > this.#session.last_seq) this.#session.last_seq = frame.seq;
    this.#ack(frame.seq);
    this.#save(); // before a refresh can forget it: the page then shows it nothing twice
  }

  async #toJob(job, frame) {
    if (frame.kind === "progress") {
      for (const fn of job.progress) await fn(frame.data?.percent, frame.data);
      return true;
    }
    if (frame.kind === "result") this.#endJob(job, null, frame.data);
    else if (frame.kind === "error") {
      this.#endJob(job, new JobError(frame.data?.code ?? "failed", frame.data?.message ?? "the job failed", job.jobId));
    }
    return true;
  }

  async #toListeners(frame) {
    const listeners = [...(this.#listeners.get("delivery") ?? [])];
    if (listeners.length === 0) return false;
    const delivery = { ...frame, jobKind: this.#restoredJobs.get(frame.job_id) ?? null };
    for (const fn of listeners) await fn(delivery);
    if (frame.kind === "result" || frame.kind === "error") {
      this.#restoredJobs.delete(frame.job_id);
      this.#save();
    }
    return true;
  }

  #onAccepted(frame) {
    const job = this.#jobs.get(frame.ref);
    if (job === undefined) return; // timed out meanwhile: its deliveries go to `delivery`
    job.jobId = frame.job_id;
    this.#jobsById.set(frame.job_id, job);
    clearTimeout(job.deadline);
    job.resolveAccepted(frame.job_id);
    this.#save();
    this.#releaseHeld();
  }

  #awaitingAccepted() {
    for (const job of this.#jobs.values()) if (job.jobId === null) return true;
    return false;
  }

  /** Held deliveries whose job is now known, or that no pending submit can claim. */
  #releaseHeld() {
    const waiting = this.#awaitingAccepted();
    for (const [id, frame] of this.#held) {
      if (this.#jobsById.has(frame.job_id) || !waiting) {
        this.#held.delete(id);
        this.#onDeliver(frame);
      }
    }
  }

  #onEvent(frame) {
    for (const { onEvent } of this.#subs.get(frame.topic)?.listeners ?? []) {
      try {
        onEvent(frame);
      } catch (error) {
        this.#emit("error", new AckwireError("handler_failed", `an event handler threw: ${error?.message ?? error}`));
      }
    }
  }

  #onError(frame) {
    const error = new AckwireError(frame.code ?? "unavailable", frame.message ?? "", {
      ref: frame.ref,
      topic: frame.topic,
      gap: frame.gap,
    });
    const job = frame.ref ? this.#jobs.get(frame.ref) : undefined;
    if (job !== undefined) return this.#submitRefused(job, error);
    if (frame.ref && this.#settleRef(frame.ref, null, error)) return;
    if (frame.topic) {
      const sub = this.#subs.get(frame.topic);
      if (frame.code === "forbidden_topic") this.#subs.delete(frame.topic); // it is over
      for (const { onError } of sub?.listeners ?? []) onError(error);
      if (sub) return;
    }
    this.#emit("error", error);
  }

  #submitRefused(job, error) {
    const wait = job.jobId === null ? retryMs(error.code, job.refused ?? 0) : null;
    if (wait === null) return this.#endJob(job, error);
    job.refused = (job.refused ?? 0) + 1;
    job.sent = false;
    clearTimeout(job.retry);
    job.retry = setTimeout(() => {
      // Not connected: it goes after the next welcome, with every unsent submit.
      if (this.#jobs.get(job.ref) === job && !job.sent && this.#welcomed) this.#sendSubmit(job);
    }, wait);
  }

  #settleRef(ref, frame, error) {
    const pending = this.#pendingRefs.get(ref);
    if (pending === undefined) return false;
    this.#pendingRefs.delete(ref);
    pending(frame, error);
    return true;
  }

  // -- frames out ----------------------------------------------------------------

  #sendRaw(frame) {
    const ws = this.#ws;
    if (!ws || typeof ws !== "object" || ws.readyState !== OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  #tooLarge(frame) {
    const limit = this.#welcome?.max_frame_bytes ?? Infinity;
    return new TextEncoder().encode(JSON.stringify(frame)).length > limit;
  }

  #sendSubmit(job) {
    if (this.#tooLarge(job.frame)) {
      return this.#endJob(job, new AckwireError("frame_too_large", "the submit is larger than the gateway accepts"));
    }
    if (this.#sendRaw(job.frame)) job.sent = true;
  }

  #sendSubscribe(topic, sub) {
    const ref = this.#nextRef();
    this.#pendingRefs.set(ref, (frame, error) => {
      if (this.#subs.get(topic) !== sub) return;
      if (frame) Object.assign(sub, { confirmed: true, refused: 0 });
      if (error) {
        const wait = retryMs(error.code, sub.refused ?? 0);
        if (wait !== null) {
          // Asked again in a while ("subscribe again"), or after the next welcome.
          sub.refused = (sub.refused ?? 0) + 1;
          setTimeout(() => {
            if (this.#subs.get(topic) === sub && !sub.confirmed && this.#welcomed) this.#sendSubscribe(topic, sub);
          }, wait);
          return;
        }
        this.#subs.delete(topic);
        for (const { onError } of sub.listeners) onError(error);
      }
    });
    this.#sendRaw({ type: "subscribe", ref, topic });
  }

  #ack(seq) {
    if (this.#welcomed) this.#sendAck(seq);
    else this.#keepAck(seq);
  }

  #sendAck(seq) {
    if (this.#sendRaw({ type: "ack", seq })) {
      this.stats.acksSent += 1;
      this.#acksSinceProbe.push(seq);
    } else {
      this.#keepAck(seq);
    }
  }

  #keepAck(seq) {
    if (this.#keptAcks.has(seq)) return;
    this.stats.acksKept += 1;
    this.#keptAcks.add(seq);
    // Past the bound the oldest ack is dropped: its message comes again, and is deduped.
    while (this.#keptAcks.size > this.#o.maxKeptAcks) this.#keptAcks.delete(this.#keptAcks.values().next().value);
    this.#save();
  }

  // -- keep-alive, refresh, page -----------------------------------------------------

  #startHeartbeat(heartbeatS) {
    const everyMs = Math.max(1, heartbeatS) * 1000;
    this.#lastHeard = Date.now();
    const tick = () => {
      if (Date.now() - this.#lastHeard > 2 * everyMs) return this.#onGone(4000, "no pong in time");
      this.#ping();
      this.#setTimer("ping", everyMs, tick);
    };
    this.#setTimer("ping", everyMs, tick);
  }

  #ping() {
    // Acks sent before this ping are read by the gateway once its pong comes back.
    this.#acksBeforePong.push(...this.#acksSinceProbe);
    this.#acksSinceProbe = [];
    this.#sendRaw({ type: "ping" });
  }

  /** Is the socket still alive? A ping now, and the connection is given up without an answer. */
  #probe() {
    if (!this.#welcomed) return;
    this.#ping();
    this.#setTimer("probe", this.#o.probeTimeoutMs, () => this.#onGone(4000, "no pong to a probe"));
  }

  #scheduleRefresh() {
    if (typeof this.#tokenSource !== "function") return;
    const exp = tokenExpiry(this.#token);
    if (exp === null) return;
    // About a minute ahead (protocol.md, 3), or half the time left for a short-lived token.
    const leftS = exp - Date.now() / 1000;
    const aheadS = Math.min(this.#o.refreshAheadS, leftS / 2);
    const inMs = Math.max(0, (leftS - aheadS) * 1000);
    this.#setTimer("refresh", inMs, () => this.#refresh());
  }

  async #refresh() {
    const ws = this.#ws;
    let token;
    try {
      token = await this.#tokenSource();
    } catch (error) {
      this.#emit("error", new AckwireError("refresh_failed", `the token callback failed: ${error?.message ?? error}`));
      return this.#setTimer("refresh", 5_000, () => this.#refresh());
    }
    if (this.#ws !== ws || !this.#welcomed) return; // the next connection uses a fresh one
    if ((tokenExpiry(token) ?? 0) <= (tokenExpiry(this.#token) ?? 0)) {
      // Nothing newer to be had (a pasted token): the gateway ends the connection at
      // `exp` (4401), and the next connection asks for a token again.
      return this.#emit("error", new AckwireError("refresh_failed", "the token callback gave no newer token"));
    }
    const ref = this.#nextRef();
    this.#pendingRefs.set(ref, (frame, error) => {
      if (frame) {
        this.#token = token;
        this.#scheduleRefresh();
      } else {
        this.#emit("error", new AckwireError("refresh_failed", error.message));
        this.#setTimer("refresh", 5_000, () => this.#refresh());
      }
    });
    this.#sendRaw({ type: "refresh", ref, token });
  }

  #isPaused() {
    return this.#paused.hidden || this.#paused.offline;
  }

  #pause(why) {
    const was = this.#isPaused();
    this.#paused[why] = true;
    if (was || this.#state === "closed") return;
    this.#detach();
    this.#clearTimer("retry");
    this.#setState("paused");
  }

  #unpause(why) {
    this.#paused[why] = false;
    if (this.#state === "closed") return;
    if (this.#state === "paused" && !this.#isPaused()) {
      this.#attempt = 0;
      this.#connect();
    } else if (this.#state === "waiting" && !this.#isPaused()) {
      this.#attempt = 0;
      this.#connect(); // back online: no reason to wait out a back-off
    } else {
      this.#probe(); // a socket kept through a hidden spell may have died quietly
    }
  }

  #watchPage() {
    const win = globalThis.window;
    const doc = globalThis.document;
    if (!win?.addEventListener || !doc) return () => {};
    const onOffline = () => this.#pause("offline");
    const onOnline = () => this.#unpause("offline");
    const onVisibility = () => {
      if (doc.visibilityState === "hidden") {
        this.#setTimer("hidden", this.#o.pauseWhenHiddenMs, () => this.#pause("hidden"));
      } else {
        this.#clearTimer("hidden");
        this.#unpause("hidden");
      }
    };
    win.addEventListener("offline", onOffline);
    win.addEventListener("online", onOnline);
    doc.addEventListener("visibilitychange", onVisibility);
    if (globalThis.navigator?.onLine === false) this.#paused.offline = true;
    return () => {
      win.removeEventListener("offline", onOffline);
      win.removeEventListener("online", onOnline);
      doc.removeEventListener("visibilitychange", onVisibility);
      this.#clearTimer("hidden");
    };
  }

  // -- small things --------------------------------------------------------------

  #endJob(job, error, data) {
    clearTimeout(job.deadline);
    clearTimeout(job.retry);
    this.#jobs.delete(job.ref);
    if (job.jobId) this.#jobsById.delete(job.jobId);
    if (error) this.#failJob(job, error);
    else job.resolveResult(data);
    this.#releaseHeld();
  }

  #failJob(job, error) {
    job.rejectAccepted(error);
    job.rejectResult(error);
  }

  #nextRef() {
    this.#refCounter += 1;
    return `c-${this.#refPrefix}-${this.#refCounter}`;
  }

  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit("state", { state, gateway: this.gateway, sessionId: this.sessionId });
  }

  #emit(event, value) {
    for (const listener of this.#listeners.get(event) ?? []) {
      try {
        listener(value);
      } catch {
        // one listener's failure is not the connection's
      }
    }
  }

  #setTimer(name, ms, fn) {
    this.#clearTimer(name);
    this.#timers[name] = setTimeout(() => {
      delete this.#timers[name];
      fn();
    }, ms);
  }

  #clearTimer(name) {
    clearTimeout(this.#timers[name]);
    delete this.#timers[name];
  }

  #load() {
    try {
      return JSON.parse(this.#storage?.getItem(this.#storageKey) ?? "{}") ?? {};
    } catch {
      return {};
    }
  }

  #save() {
    if (!this.#storage) return;
    const accepted = [...this.#jobsById.values()].map((job) => [job.jobId, job.kind]);
    const state = {
      session: this.#session,
      seen: this.#seen.toJSON(),
      acks: [...this.#keptAcks],
      jobs: [...this.#restoredJobs, ...accepted],
    };
    try {
      this.#storage.setItem(this.#storageKey, JSON.stringify(state));
    } catch {
      // storage full or refused: the session still works, a refresh starts afresh
    }
  }
}

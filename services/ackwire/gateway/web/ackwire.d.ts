// Type declarations of ackwire.js, the browser SDK (docs/sdk-browser.md).

export declare const SUBPROTOCOL: "ackwire.v1";
export declare const VERSION: string;

/**
 * What an AckwireError's `code` can be: the SDK's own, or a gateway's `error` code
 * (docs/protocol.md, 8; an unknown one is best treated like `unavailable`).
 */
export type AckwireErrorCode =
  | "timeout" // a submit got no `accepted` before its deadline
  | "queue_full" // too many submits waiting for a connection
  | "frame_too_large" // larger than the welcome's max_frame_bytes
  | "session_lost" // the session could not be resumed: this job's fate is unknown
  | "taken_over" // another connection resumed the session (4409): this client stopped
  | "unauthenticated" // the token was refused or expired and no fresh one was had
  | "ended" // the session ended with `bye`
  | "closed" // the client was closed
  | "refresh_failed"
  | "handler_failed" // an app handler threw: the delivery is not acked and comes again
  | "bad_frame"
  | "bad_options"
  | "bad_url"
  | "no_such_kind"
  | "bad_payload"
  | "rate_limited"
  | "unavailable"
  | "bad_token"
  | "forbidden_topic"
  | "too_many_topics"
  | "topic_gap"
  | (string & {});

export declare class AckwireError extends Error {
  readonly code: AckwireErrorCode;
  readonly ref?: string;
  readonly topic?: string;
  readonly gap?: { after: number; before: number };
  readonly reason?: "expired" | "unknown" | "refused";
  constructor(code: AckwireErrorCode, message: string, details?: object);
}

/** A job that ended in a `deliver` of kind `error`: `code` is `failed`, `no_capacity`, … */
export declare class JobError extends AckwireError {
  readonly jobId: string;
}

export type State = "idle" | "connecting" | "open" | "waiting" | "paused" | "closed";
export type ClosedReason = "ended" | "taken_over" | "unauthenticated" | "closed";
export type TokenSource = string | (() => string | Promise<string>);

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface ClientOptions {
  /** The gateway to connect to; with `urls`, the others to fail over to. */
  url?: string;
  urls?: string[];
  /** A token, or a callback giving a fresh one (called to connect and to refresh). */
  token: TokenSource;
  /** One client (one WebSocket) per key and page with `AckwireClient.shared`; "default". */
  key?: string;
  /** Where the session, seen ids and kept acks live; sessionStorage by default, null: nowhere. */
  storage?: StorageLike | null;
  WebSocket?: typeof WebSocket;
  backoffInitialMs?: number; // 500
  backoffMaxMs?: number; // 30000
  connectTimeoutMs?: number; // 10000
  submitTimeoutMs?: number; // 30000
  maxQueuedSubmits?: number; // 100
  dedupeLimit?: number; // 2000
  maxKeptAcks?: number; // 1024
  maxHeldDeliveries?: number; // 256
  refreshAheadS?: number; // 60
  pauseWhenHiddenMs?: number; // 60000
  probeTimeoutMs?: number; // 3000
}

export interface Welcome {
  type: "welcome";
  session_id: string;
  resume_token: string;
  resumed: boolean;
  reason?: "new" | "expired" | "unknown";
  gateway: string;
  heartbeat_s: number;
  max_frame_bytes: number;
  window: number;
}

export interface Delivery {
  type: "deliver";
  seq: number;
  id: string;
  kind: "result" | "error" | "progress" | "message";
  job_id?: string | null;
  data: any;
  redelivered: boolean;
  /** The kind of the job, when it was submitted before a page refresh. */
  jobKind: string | null;
}

export interface TopicEvent {
  type: "event";
  topic: string;
  seq: number;
  data: any;
  snapshot: boolean;
}

export interface JobInFlight {
  ref: string | null;
  kind: string;
  jobId: string | null;
}

export interface Events {
  state: { state: State; gateway: string | null; sessionId: string | null };
  welcome: Welcome;
  "session-lost": { reason: string; jobs: JobInFlight[] };
  delivery: Delivery;
  error: AckwireError;
}

export interface Job<T = any> {
  readonly ref: string;
  /** The job id, once the gateway stored the job. */
  readonly accepted: Promise<string>;
  /** The result's data; rejects with JobError or AckwireError. */
  readonly result: Promise<T>;
  onProgress(listener: (percent: number, data: any) => void | Promise<void>): Job<T>;
}

export interface SubmitOptions {
  timeoutMs?: number;
  idempotencyKey?: string;
  onProgress?: (percent: number, data: any) => void | Promise<void>;
}

export interface Subscription {
  unsubscribe(): void;
}

export interface Stats {
  duplicates: number;
  acksSent: number;
  acksKept: number;
  keptAcksSent: number;
  resumes: number;
  connects: number;
}

export declare class AckwireClient {
  static shared(options: ClientOptions): AckwireClient;
  constructor(options: ClientOptions);
  readonly state: State;
  readonly closedReason: ClosedReason | null;
  readonly gateway: string | null;
  readonly sessionId: string | null;
  readonly jobsInFlight: JobInFlight[];
  readonly stats: Stats;
  on<E extends keyof Events>(
    event: E,
    listener: (value: Events[E]) => void | Promise<void>,
  ): () => void;
  start(): this;
  reconnect(): void;
  close(options?: { bye?: boolean }): Promise<void>;
  run<T = any>(kind: string, payload?: object, options?: SubmitOptions): Promise<T>;
  submit<T = any>(kind: string, payload?: object, options?: SubmitOptions): Job<T>;
  subscribe(
    topic: string,
    onEvent: (event: TopicEvent) => void,
    onError?: (error: AckwireError) => void,
  ): Subscription;
}

export declare function closeAction(
  code: number,
): { action: "now" | "backoff" | "new_session" | "token" } | { action: "stop"; reason: ClosedReason };
export declare function backoffDelay(
  attempt: number,
  initialMs: number,
  maxMs: number,
  random?: () => number,
): number;
export declare function tokenExpiry(token: string): number | null;
/** Milliseconds before a refused submit or subscribe goes again, or `null`: it fails. */
export declare function retryMs(
  code: string,
  refused: number,
  random?: () => number,
): number | null;
export declare class SeenIds {
  constructor(limit: number, ids?: string[]);
  has(id: string): boolean;
  add(id: string): void;
  toJSON(): string[];
}

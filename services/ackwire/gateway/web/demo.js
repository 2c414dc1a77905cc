// The demo page: a job console, a progress board, messages and the connection's state,
// each a component of its own asking for the page's one connection (AckwireClient.shared).
import { AckwireClient } from "/ackwire.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const sub = params.get("sub") ?? "alice";
const TOKEN_KEY = "ackwire-demo:token";

const SAMPLE_PAYLOADS = {
  translate: { text: "你好", source: "zh", target: "en" },
  echo: { hello: "world" },
  sleep: { seconds: 5 },
  fail: { message: "this job fails on purpose" },
};

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  return response.ok ? response.json() : null;
}

/**
 * The token: minted by the gateway only where it runs with the development secret on
 * loopback (`/demo-token` answers 404 anywhere else); otherwise pasted by the user.
 */
async function tokenSource() {
  const pasted = sessionStorage.getItem(TOKEN_KEY);
  if (pasted) return () => sessionStorage.getItem(TOKEN_KEY);
  const demo = await getJson(`/demo-token?sub=${encodeURIComponent(sub)}`).catch(() => null);
  if (demo === null) return null;
  $("token-hint").textContent =
    `A development token for "${demo.sub}" (topics ${demo.topics.join(", ")}), ` +
    "minted by this gateway because it runs with the development secret on loopback.";
  $("token-panel").classList.add("ready");
  return async () => {
    const fresh = await getJson(`/demo-token?sub=${encodeURIComponent(sub)}`);
    if (fresh === null) throw new Error("the gateway minted no token");
    return fresh.token;
  };
}

function waitForPastedToken() {
  $("token-hint").textContent =
    "This gateway mints no token (it has a real secret, or is not on loopback). " +
    "Paste one made with the deployment's secret:";
  return new Promise((resolve) => {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token-panel").classList.add("ready");
      resolve(() => sessionStorage.getItem(TOKEN_KEY));
    });
  });
}

function connectionOptions(token, gateways) {
  const own = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;
  const options = { urls: [own, ...gateways], token, key: `demo-${sub}` };
  if (params.has("pause_hidden_ms")) options.pauseWhenHiddenMs = Number(params.get("pause_hidden_ms"));
  return options;
}

function item(text, attributes = {}) {
  const li = document.createElement("li");
  li.textContent = text;
  for (const [name, value] of Object.entries(attributes)) li.setAttribute(name, value);
  return li;
}

// -- components ------------------------------------------------------------------------

function statusBar(connect) {
  const client = connect();
  const show = () => {
    $("state").textContent = client.state;
    $("state").dataset.state = client.state;
    $("gateway").textContent = client.gateway ?? "no gateway yet";
    $("session").textContent = client.sessionId ?? "none";
  };
  client.on("state", show);
  client.on("welcome", show);
  client.on("error", (error) => ($("problems").textContent = `${error.code}: ${error.message}`));
  client.on("session-lost", ({ reason, jobs }) => {
    $("problems").textContent =
      `The session could not be resumed (${reason}); ${jobs.length} job(s) in flight are lost.`;
  });
  show();
}

/** Every result or error, once: the SDK dedupes, and this list shows what it handed over. */
function showResult(jobId, kind, outcome, data) {
  $("results").append(item(`${kind} ${jobId}: ${outcome} ${JSON.stringify(data)}`, {
    "data-job-id": jobId,
    class: `status-${outcome}`,
  }));
}

function jobConsole(connect) {
  const client = connect();
  const fillPayload = () => ($("payload").value = JSON.stringify(SAMPLE_PAYLOADS[$("kind").value]));
  $("kind").addEventListener("change", fillPayload);
  fillPayload();
  $("job-form").addEventListener("submit", (event) => {
    event.preventDefault();
    let payload;
    try {
      payload = JSON.parse($("payload").value || "{}");
    } catch (error) {
      $("problems").textContent = `The payload is not JSON: ${error.message}`;
      return;
    }
    const kind = $("kind").value;
    const row = item("", { class: "job" });
    const label = document.createElement("span");
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = 0;
    label.textContent = `${kind}: queued `;
    row.append(label, bar);
    $("jobs").prepend(row);
    const job = client.submit(kind, payload, {
      onProgress: (percent) => {
        bar.value = percent ?? 0;
        label.textContent = `${kind} ${row.dataset.jobId}: ${Math.round(percent ?? 0)}% `;
      },
    });
    row.dataset.ref = job.ref;
    job.accepted.then((jobId) => {
      row.dataset.jobId = jobId;
      label.textContent = `${kind} ${jobId}: running `;
    }, () => {});
    job.result.then(
      (data) => {
        bar.value = 100;
        label.textContent = `${kind} ${row.dataset.jobId}: done `;
        row.dataset.status = "result";
        showResult(row.dataset.jobId, kind, "result", data);
      },
      (error) => {
        label.textContent = `${kind} ${row.dataset.jobId ?? job.ref}: ${error.code} `;
        row.dataset.status = "error";
        row.classList.add("status-error");
        if (row.dataset.jobId) showResult(row.dataset.jobId, kind, "error", { code: error.code, message: error.message });
      },
    );
  });
}

function progressBoard(connect) {
  const client = connect();
  let subscription = null;
  let count = 0;
  $("topic-form").addEventListener("submit", (event) => {
    event.preventDefault();
    subscription?.unsubscribe();
    const topic = $("topic").value.trim();
    count = 0;
    $("bar-label").textContent = `subscribed to ${topic}, waiting for an event`;
    $("publish-hint").textContent =
      `.venv/bin/ackwire publish --topic ${topic} --data '{"percent": 40}' --snapshot`;
    subscription = client.subscribe(
      topic,
      (frame) => {
        count += 1;
        const percent = Math.max(0, Math.min(100, Number(frame.data?.percent ?? 0)));
        $("bar").style.width = `${percent}%`;
        $("bar-label").textContent = `${topic}: ${percent}%${frame.snapshot ? " (snapshot)" : ""}`;
        $("event-count").textContent = `${count} event(s), last seq ${frame.seq}`;
      },
      (error) => ($("bar-label").textContent = `${topic}: ${error.code} ${error.message}`),
    );
  });  $("topic-form").requestSubmit(); // the default topic at once: the bar moves right after `make up`
}

function messages(connect) {
  const client = connect();
  client.on("delivery", (delivery) => {
    if (delivery.kind === "message") {
      $("messages").append(item(JSON.stringify(delivery.data), { "data-id": delivery.id }));
    } else if (delivery.kind === "result" || delivery.kind === "error") {
      // A job submitted before this page was (re)loaded: its end is shown once too.
      showResult(delivery.job_id, delivery.jobKind ?? "job", delivery.kind, delivery.data);
    }
  });
}

// -- start -----------------------------------------------------------------------------

const token = (await tokenSource()) ?? (await waitForPastedToken());
const gateways = (await getJson("/gateways").catch(() => null))?.gateways ?? [];
const connect = () => AckwireClient.shared(connectionOptions(token, gateways));
for (const component of [statusBar, jobConsole, progressBoard, messages]) component(connect);
window.ackwire = connect(); // for a look from the browser's console

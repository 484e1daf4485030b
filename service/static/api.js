// Calls to the public API, and the one place where errors are shown in plain words.

const memory = { apiKey: "" }; // the API key lives only in this module (the tab's memory)

export function setApiKey(key) {
  memory.apiKey = key.trim();
}

export function apiKey() {
  return memory.apiKey;
}

/** An error from the API (its JSON ``message`` and ``code``) or from the network. */
export class ApiProblem extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

function authHeaders() {
  return memory.apiKey ? { Authorization: `Bearer ${memory.apiKey}` } : {};
}

async function problemOf(resp) {
  let code = `http_${resp.status}`;
  let message = `the server answered ${resp.status} ${resp.statusText}`.trim();
  try {
    const body = await resp.json();
    if (body && typeof body.message === "string") message = body.message;
    if (body && typeof body.code === "string") code = body.code;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiProblem(message, code, resp.status);
}

/** ``fetch`` with the API key; resolves to the Response when ok, throws ``ApiProblem``. */
export async function api(path, options = {}) {
  const headers = { ...authHeaders(), ...(options.headers || {}) };
  let resp;
  try {
    resp = await fetch(path, { ...options, headers });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiProblem(`cannot reach the server (${err.message})`, "network", 0);
  }
  if (!resp.ok) throw await problemOf(resp);
  return resp;
}

export async function apiJson(path, options = {}) {
  return (await api(path, options)).json();
}

/** Server-sent events of ``path`` read with fetch (so the API key header goes along). */
export async function* serverEvents(path, signal) {
  const resp = await api(path, { signal, headers: { Accept: "text/event-stream" } });
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
        }
        if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

const errorBox = () => document.getElementById("error");

/** Show an error in plain words (``code`` is shown small, for bug reports). */
export function showError(message, code = "") {
  const box = errorBox();
  document.getElementById("error-text").textContent = message;
  document.getElementById("error-code").textContent = code ? `(${code})` : "";
  box.dataset.code = code;
  box.hidden = false;
}

export function clearError() {
  const box = errorBox();
  box.hidden = true;
  box.dataset.code = "";
  document.getElementById("error-text").textContent = "";
}

/** Report any thrown value on the page. */
export function report(err) {
  if (err instanceof ApiProblem) showError(err.message, err.code);
  else if (err && err.name === "AbortError") return;
  else showError(err && err.message ? err.message : String(err), "page_error");
}

// Live mode: frames from the camera or a local file go over WS /v1/sessions/{id}/stream;
// the replies (masks, boxes, ids) are drawn over the frame they answer.

import { ApiProblem, api, apiJson, apiKey, clearError, report, showError } from "./api.js";
import { paintLabels, paintMasks, trackColor } from "./rle.js";

const $ = (id) => document.getElementById(id);
const MAX_IN_FLIGHT = 2; // frames sent and not yet answered; beyond that a tick is dropped
const MAX_RETRIES = 40;
const BUSY_RETRY_MS = 5000; // close 1013: the server is at its stream limit; wait this long
const SUPERSEDED = 4001; // close 4001: another stream took over this session
const TRY_AGAIN_LATER = 1013;

const s = {
  active: false, ending: false, paused: false, session: null, token: null, ws: null,
  stream: null, fileUrl: null, timer: null, retryTimer: null, endTimer: null, capturing: false,
  retry: 0, reconnecting: false, reconnects: 0, sent: 0, answered: 0, errors: 0,
  clientDropped: 0, lost: 0, serverDropped: 0, serverDroppedBase: 0, lag: 0,
  pending: [], latencies: [], answerTimes: [], tracks: new Map(),
};

function setStatus(text) {
  $("stat-status").textContent = text;
  $("live-panel").dataset.state = text;
}

function median(values) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function updateStats() {
  const dropped = s.clientDropped + s.lost + s.serverDroppedBase + s.serverDropped;
  const now = performance.now();
  s.answerTimes = s.answerTimes.filter((t) => now - t <= 3000);
  const span = s.answerTimes.length > 1 ? (now - s.answerTimes[0]) / 1000 : 0;
  const fps = span > 0 ? (s.answerTimes.length - 1) / span : null;
  const p50 = median(s.latencies);
  $("stat-sent").textContent = String(s.sent);
  $("stat-answered").textContent = String(s.answered);
  $("stat-dropped").textContent = String(dropped);
  $("stat-fps").textContent = fps === null ? "–" : fps.toFixed(1);
  $("stat-latency").textContent = p50 === null ? "–" : `${Math.round(p50)} ms`;
  $("stat-lag").textContent = String(s.lag);
  $("stat-reconnects").textContent = String(s.reconnects);
  const view = $("live-view");
  view.dataset.pending = String(s.pending.length);
  view.dataset.answered = String(s.answered);
  view.dataset.sent = String(s.sent);
  view.dataset.dropped = String(dropped);
  view.dataset.reconnects = String(s.reconnects);
}

function setButtons() {
  $("live-start").disabled = s.active;
  $("live-pause").disabled = !s.active || s.ending;
  $("live-end").disabled = !s.active || s.ending;
  $("live-pause").textContent = s.paused ? "Resume" : "Pause";
  $("live-pause").setAttribute("aria-pressed", String(s.paused));
}

async function openSource() {
  const video = $("live-source-video");
  if ($("live-source").value === "camera") {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("this browser offers no camera here (cameras need https or localhost)");
    }
    try {
      s.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (err) {
      throw new Error(`the camera could not be opened (${err.message || err.name})`);
    }
    video.srcObject = s.stream;
  } else {
    const file = $("live-file").files[0];
    if (!file) throw new Error("choose a video file first");
    video.srcObject = null;
    s.fileUrl = URL.createObjectURL(file);
    video.src = s.fileUrl;
    video.loop = true;
  }
  try {
    await video.play();
  } catch (err) {
    throw new Error(`the video cannot be played in this browser (${err.message || err.name})`);
  }
  if (!video.videoWidth) {
    await new Promise((resolve) => video.addEventListener("loadedmetadata", resolve, { once: true }));
  }
}

function stopSource() {
  const video = $("live-source-video");
  video.pause();
  if (s.stream) s.stream.getTracks().forEach((t) => t.stop());
  s.stream = null;
  video.srcObject = null;
  if (s.fileUrl) URL.revokeObjectURL(s.fileUrl);
  s.fileUrl = null;
  video.removeAttribute("src");
}

function wsUrl() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const query = new URLSearchParams({ token: s.token });
  if (apiKey()) query.set("api_key", apiKey());
  return `${proto}://${location.host}/v1/sessions/${s.session}/stream?${query}`;
}

function connect() {
  const ws = new WebSocket(wsUrl());
  s.ws = ws;
  setStatus(s.reconnecting ? "reconnecting" : "connecting");
  ws.onopen = () => {
    if (s.ws !== ws) return;
    if (s.reconnecting) s.reconnects += 1;
    s.reconnecting = false;
    s.retry = 0;
    setStatus(s.paused ? "paused" : "live");
    updateStats();
  };
  ws.onmessage = (ev) => {
    if (s.ws === ws) onMessage(JSON.parse(ev.data));
  };
  ws.onclose = (ev) => {
    if (s.ws === ws) onClose(ev);
  };
}

function draw(item, msg) {
  const { width, height, instances } = msg;
  for (const id of ["live-frame", "live-masks", "live-labels"]) {
    const c = $(id);
    if (c.width !== width) c.width = width;
    if (c.height !== height) c.height = height;
  }
  if (item) $("live-frame").getContext("2d").drawImage(item.canvas, 0, 0, width, height);
  paintMasks($("live-masks").getContext("2d"), instances, width, height);
  paintLabels($("live-labels").getContext("2d"), instances, width, height);
  const view = $("live-view");
  view.dataset.frameIndex = String(msg.frame_index);
  view.dataset.trackIds = instances.map((i) => i.track_id).sort((a, b) => a - b).join(",");
}

function recordTracks(msg) {
  for (const inst of msg.instances) {
    let track = s.tracks.get(inst.track_id);
    if (!track) {
      track = { first: msg.frame_index, frames: 0, scoreSum: 0 };
      s.tracks.set(inst.track_id, track);
    }
    track.name = inst.category_name;
    track.last = msg.frame_index;
    track.frames += 1;
    track.scoreSum += inst.score;
  }
  const ids = [...s.tracks.keys()].sort((a, b) => a - b);
  $("live-view").dataset.allTrackIds = ids.join(",");
  const body = $("live-tracks").querySelector("tbody");
  body.replaceChildren();
  for (const id of ids) {
    const t = s.tracks.get(id);
    const tr = document.createElement("tr");
    tr.dataset.trackId = String(id);
    const values = [id, t.name, t.first, t.last, t.frames, (t.scoreSum / t.frames).toFixed(3)];
    values.forEach((value, i) => {
      const td = document.createElement("td");
      if (i === 1) {
        td.className = "cls";
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = `rgb(${trackColor(id).join(",")})`;
        td.append(swatch);
      }
      td.append(String(value));
      tr.append(td);
    });
    body.append(tr);
  }
}

function onMessage(msg) {
  if (msg.type === "frame") {
    const item = s.pending.shift();
    const now = performance.now();
    s.answered += 1;
    if (item) {
      s.latencies.push(now - item.t);
      if (s.latencies.length > 100) s.latencies.shift();
    }
    s.answerTimes.push(now);
    s.lag = msg.lag;
    s.serverDropped = msg.dropped_frames;
    draw(item, msg);
    recordTracks(msg);
  } else if (msg.type === "error") {
    s.pending.shift();
    s.errors += 1;
    showError(msg.message, msg.code);
  } else if (msg.type === "end") {
    setStatus("ending");
  }
  updateStats();
}

async function refusal(reason) {
  // The close reason is a code; the session route gives the same check in plain words.
  try {
    await apiJson(`/v1/sessions/${s.session}`, { headers: { "X-Session-Token": s.token } });
    showError(`the server refused the stream (${reason || "policy violation"})`, reason || "ws_1008");
  } catch (err) {
    report(err);
  }
}

function onClose(ev) {
  s.ws = null;
  s.lost += s.pending.length;
  s.pending = [];
  s.serverDroppedBase += s.serverDropped;
  s.serverDropped = 0;
  updateStats();
  if (s.ending || !s.active) {
    finish();
  } else if (ev.code === 1008) {
    refusal(ev.reason).finally(() => stop("refused"));
  } else if (ev.code === SUPERSEDED) {
    // Reconnecting would take the session back and close the other stream in turn.
    showError("another stream took over this session", "superseded");
    stop("superseded");
  } else if (ev.code === TRY_AGAIN_LATER) {
    scheduleReconnect(BUSY_RETRY_MS);
  } else {
    scheduleReconnect();
  }
}

function scheduleReconnect(minDelay = 0) {
  s.retry += 1;
  if (s.retry > MAX_RETRIES) {
    showError("the connection to the server was lost and could not be re-established", "disconnected");
    stop("disconnected");
    return;
  }
  s.reconnecting = true;
  setStatus("reconnecting");
  s.retryTimer = setTimeout(reconnect, Math.max(minDelay, Math.min(250 * 2 ** (s.retry - 1), 2000)));
}

async function reconnect() {
  if (!s.active || s.ending) return;
  try {
    await apiJson(`/v1/sessions/${s.session}`, { headers: { "X-Session-Token": s.token } });
  } catch (err) {
    if (err instanceof ApiProblem && (err.status === 0 || err.status >= 500)) {
      scheduleReconnect(); // the server is restarting: try again
    } else {
      report(err);
      stop("lost");
    }
    return;
  }
  connect();
}

async function tick() {
  const ws = s.ws;
  if (s.paused || s.capturing || !ws || ws.readyState !== WebSocket.OPEN) return;
  if (s.pending.length >= MAX_IN_FLIGHT) {
    s.clientDropped += 1;
    updateStats();
    return;
  }
  const video = $("live-source-video");
  if (!video.videoWidth || !video.videoHeight) return;
  const width = Math.max(2, 2 * Math.round((Number($("send-width").value) || 256) / 2));
  const height = Math.max(2, 2 * Math.round((width * video.videoHeight) / video.videoWidth / 2));
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").drawImage(video, 0, 0, width, height);
  const quality = Math.min(1, Math.max(0.1, Number($("jpeg-quality").value) || 0.85));
  s.capturing = true;
  let bytes = null;
  try {
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", quality));
    bytes = blob ? await blob.arrayBuffer() : null;
  } finally {
    s.capturing = false;
  }
  if (!bytes || s.paused || s.ws !== ws || ws.readyState !== WebSocket.OPEN) return;
  s.pending.push({ t: performance.now(), canvas });
  ws.send(bytes);
  s.sent += 1;
  updateStats();
}

function startTimer() {
  clearInterval(s.timer);
  const fps = Math.min(30, Math.max(0.5, Number($("send-fps").value) || 8));
  s.timer = setInterval(() => tick().catch(report), 1000 / fps);
}

function resetCounters() {
  Object.assign(s, {
    retry: 0, reconnecting: false, reconnects: 0, sent: 0, answered: 0, errors: 0,
    clientDropped: 0, lost: 0, serverDropped: 0, serverDroppedBase: 0, lag: 0,
    pending: [], latencies: [], answerTimes: [],
  });
  s.tracks.clear();
  $("live-tracks").querySelector("tbody").replaceChildren();
  Object.assign($("live-view").dataset, { frameIndex: "", trackIds: "", allTrackIds: "" });
  updateStats();
}

async function start(event) {
  event.preventDefault();
  if (s.active) return;
  clearError();
  resetCounters();
  $("live-start").disabled = true;
  try {
    await openSource();
    const created = await apiJson("/v1/sessions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
    s.session = created.session_id;
    s.token = created.token;
    $("live-view").dataset.sessionId = s.session;
    Object.assign(s, { active: true, ending: false, paused: false });
    connect();
    startTimer();
  } catch (err) {
    stopSource();
    setStatus("idle");
    report(err);
  }
  setButtons();
}

function stop(status) {
  clearInterval(s.timer);
  clearTimeout(s.retryTimer);
  clearTimeout(s.endTimer);
  s.active = false;
  s.ending = false;
  s.reconnecting = false;
  const ws = s.ws;
  s.ws = null;
  if (ws) ws.close(1000);
  stopSource();
  setStatus(status);
  setButtons();
}

async function finish() {
  const session = s.session;
  const token = s.token;
  stop("ended");
  if (!session) return;
  try {
    await api(`/v1/sessions/${session}`, { method: "DELETE", headers: { "X-Session-Token": token } });
  } catch (err) {
    if (err.status !== 404) report(err);
  }
}

function end() {
  if (!s.active || s.ending) return;
  s.ending = true;
  clearInterval(s.timer);
  clearTimeout(s.retryTimer);
  setButtons();
  if (s.ws && s.ws.readyState === WebSocket.OPEN) {
    setStatus("ending");
    s.ws.send(JSON.stringify({ type: "end" }));
    const ws = s.ws;
    s.endTimer = setTimeout(() => ws.close(1000), 15000);
  } else {
    finish();
  }
}

function togglePause() {
  if (!s.active) return;
  s.paused = !s.paused;
  if (s.ws && s.ws.readyState === WebSocket.OPEN) setStatus(s.paused ? "paused" : "live");
  setButtons();
}

export function initLive() {
  $("live-form").addEventListener("submit", start);
  $("live-pause").addEventListener("click", togglePause);
  $("live-end").addEventListener("click", end);
  $("send-fps").addEventListener("change", () => s.active && !s.ending && startTimer());
  $("live-source").addEventListener("change", () => {
    $("live-file").disabled = $("live-source").value !== "file";
  });
  $("live-source-video").addEventListener("error", () => {
    if (s.active) showError("the local video file cannot be decoded by this browser", "source_error");
  });
  setButtons();
  updateStats();
}

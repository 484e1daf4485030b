// Video mode: upload to POST /v1/videos, follow the job's events, show overlay and tracks.

import { ApiProblem, api, apiJson, clearError, report, serverEvents, showError } from "./api.js";
import { rleArea } from "./rle.js";

const $ = (id) => document.getElementById(id);
const FINAL = new Set(["done", "failed", "cancelled", "dead_letter"]);
const job = { id: null, state: "idle", abort: null, urls: [] };
let classNames = new Map();

export function setClassNames(names) {
  classNames = names;
}

function setState(state) {
  job.state = state;
  $("video-panel").dataset.state = state;
  const busy = state === "uploading" || state === "queued" || state === "running";
  $("upload").disabled = busy;
  $("cancel").disabled = !busy || !job.id;
}

function setProgress(percent, text) {
  const bar = $("progress");
  if (percent === null) {
    bar.removeAttribute("value"); // indeterminate
    bar.dataset.percent = "";
  } else {
    bar.value = percent;
    bar.textContent = `${Math.round(percent)}%`;
    bar.dataset.percent = String(Math.round(percent));
  }
  $("progress-text").textContent = text;
}

function describe(status) {
  const done = status.frames_done || 0;
  const total = status.frames_total;
  const parts = [total ? `${done} / ${total} frames` : `${done} frames`];
  if (status.fps) parts.push(`${status.fps.toFixed(1)} fps`);
  if (status.eta_s !== null && status.eta_s !== undefined) parts.push(`eta ${Math.ceil(status.eta_s)} s`);
  return `${status.state}: ${parts.join(" · ")}`;
}

function forgetUrls() {
  for (const url of job.urls) URL.revokeObjectURL(url);
  job.urls = [];
}

/**
 * One row per track of the results file: its entries grouped by `track_id` (the id the overlay
 * draws as `#id`), in the order tracks first appear. A track may have several entries (one per
 * class the official top-k kept); the row shows its best-scoring one. An entry without a
 * `track_id` (a results file from elsewhere) is a track of its own, shown with id "–".
 */
export function trackRows(results) {
  const byTrack = new Map();
  results.forEach((entry, i) => {
    const key = entry.track_id ?? `entry ${i}`;
    if (!byTrack.has(key)) byTrack.set(key, []);
    byTrack.get(key).push(entry);
  });
  const rows = [];
  for (const entries of byTrack.values()) {
    const best = entries.reduce((a, b) => (b.score > a.score ? b : a));
    const seen = [];
    best.segmentations.forEach((s, t) => {
      if (s && rleArea(s) > 0) seen.push(t);
    });
    rows.push({
      id: best.track_id ?? null,
      categoryId: best.category_id,
      first: seen.length ? seen[0] : null,
      last: seen.length ? seen[seen.length - 1] : null,
      frames: seen.length,
      score: best.score,
    });
  }
  return rows;
}

function fillTable(rows) {
  const body = $("tracks").querySelector("tbody");
  body.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    if (row.id !== null) tr.dataset.trackId = String(row.id);
    const name = classNames.get(row.categoryId) || `category ${row.categoryId}`;
    const cells = [row.id ?? "–", name, row.first ?? "–", row.last ?? "–", row.frames, row.score.toFixed(4)];
    cells.forEach((value, i) => {
      const td = document.createElement("td");
      if (i === 1) {
        td.className = "cls";
        td.dataset.categoryId = String(row.categoryId);
      }
      td.append(String(value));
      tr.append(td);
    });
    body.append(tr);
  }
}

async function showResult(jobId, withOverlay) {
  const bytes = await (await api(`/v1/videos/${jobId}/result`)).arrayBuffer();
  const results = JSON.parse(new TextDecoder().decode(bytes));
  fillTable(trackRows(results));
  const blobUrl = URL.createObjectURL(new Blob([bytes], { type: "application/json" }));
  job.urls.push(blobUrl);
  const link = $("download");
  link.href = blobUrl;
  link.download = `${jobId}-results.json`;
  $("video-result").hidden = false;
  const video = $("overlay-video");
  if (withOverlay) {
    const blob = await (await api(`/v1/videos/${jobId}/overlay`)).blob();
    const url = URL.createObjectURL(blob);
    job.urls.push(url);
    video.src = url;
    video.hidden = false;
    video.load();
  } else {
    video.removeAttribute("src");
    video.hidden = true;
  }
}

async function follow(jobId, withOverlay) {
  const controller = new AbortController();
  job.abort = controller;
  let final = null;
  for (let attempt = 0; attempt < 5 && !final; attempt += 1) {
    try {
      for await (const { event, data } of serverEvents(`/v1/videos/${jobId}/events`, controller.signal)) {
        const total = data.frames_total;
        const percent = event === "done" ? 100 : total ? (100 * data.frames_done) / total : null;
        setProgress(percent, describe(data));
        if (job.state !== "cancelling") setState(data.state);
        if (FINAL.has(event)) {
          final = data;
          break;
        }
      }
    } catch (err) {
      if (err.name === "AbortError") return;
      if (err instanceof ApiProblem && err.status !== 0) throw err;
    }
    if (!final) await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
  }
  if (!final) final = await apiJson(`/v1/videos/${jobId}`);
  setState(final.state);
  if (final.state === "done") {
    setProgress(100, describe(final));
    await showResult(jobId, withOverlay);
  } else if (final.state === "cancelled") {
    setProgress(0, "cancelled");
  } else if (final.error) {
    showError(final.error.message, final.error.code);
  } else if (FINAL.has(final.state)) {
    showError(`the job ended as ${final.state}`, final.state);
  }
}

async function upload(event) {
  event.preventDefault();
  clearError();
  const file = $("video-file").files[0];
  if (!file) {
    showError("choose a video file first", "no_file");
    return;
  }
  if (job.abort) job.abort.abort();
  forgetUrls();
  $("video-result").hidden = true;
  const params = new URLSearchParams({ frame_stride: $("frame-stride").value || "1" });
  if ($("max-frames").value) params.set("max_frames", $("max-frames").value);
  const withOverlay = $("overlay").checked;
  params.set("overlay", String(withOverlay));
  const form = new FormData();
  form.append("file", file, file.name);
  job.id = null;
  setState("uploading");
  setProgress(0, `uploading ${file.name} (${(file.size / 1e6).toFixed(1)} MB)…`);
  try {
    const created = await apiJson(`/v1/videos?${params}`, { method: "POST", body: form });
    job.id = created.job_id;
    $("video-panel").dataset.jobId = job.id;
    setState(created.state);
    setProgress(0, describe(created));
    await follow(job.id, withOverlay);
  } catch (err) {
    setState("failed");
    setProgress(0, job.id ? "the job could not be followed" : "the upload was refused");
    report(err);
  }
}

async function cancel() {
  if (!job.id) return;
  setState("cancelling");
  $("cancel").disabled = true;
  try {
    await api(`/v1/videos/${job.id}`, { method: "DELETE" });
  } catch (err) {
    report(err);
  }
}

export function initVideo() {
  $("video-form").addEventListener("submit", upload);
  $("cancel").addEventListener("click", cancel);
  $("overlay-video").addEventListener("error", () => {
    const err = $("overlay-video").error;
    showError(`this browser cannot play the overlay video (${err ? err.message || err.code : "unknown"})`, "overlay_playback");
  });
  setState("idle");
}

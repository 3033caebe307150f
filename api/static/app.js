// The service's page: drop files, watch the upload and the job, browse the results.
// Plain JavaScript, no build step. Talks to the same JSON API as every client.
"use strict";

const KEY_STORAGE = "intel-classifier.api-key";
const PAGE_ROWS = 200;
const $ = (id) => document.getElementById(id);

const state = { job: null, items: [], thumbs: new Map(), shown: PAGE_ROWS };

// ---- the API key, entered once and kept in this browser ----
function apiKey() { return localStorage.getItem(KEY_STORAGE) || ""; }
function authHeaders() { return apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {}; }
function showKeyState() { $("key-state").textContent = apiKey() ? "saved in this browser" : ""; }
$("api-key").value = apiKey();
showKeyState();
// The key box shows only where the server asks for a key: a read without one says.
function askForKey() { $("key-form").hidden = false; }
fetch("/jobs?limit=1").then((response) => { if (response.status === 401) askForKey(); }).catch(() => {});
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
  showKeyState();
  hideError();
});

// ---- errors, in the API's words ----
function showError(message) { $("error").textContent = message; $("error").hidden = false; }
function hideError() { $("error").hidden = true; }
async function apiError(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) {
      if (response.status === 401) askForKey();
      const hint = response.status === 401 ? " Enter an API key above." : "";
      return `${body.error.message}${hint}`;
    }
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}
async function getJSON(path) {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) throw new Error(await apiError(response));
  return response.json();
}

// ---- dropping and choosing files ----
const zone = $("dropzone");
zone.addEventListener("click", (event) => { if (event.target.tagName !== "LABEL") $("file-input").click(); });
zone.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("file-input").click(); });
zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (event) => {
  event.preventDefault();
  zone.classList.remove("over");
  start([...event.dataTransfer.files]);
});
$("file-input").addEventListener("change", (event) => start([...event.target.files]));

function reset() {
  hideError();
  state.job = null; state.items = []; state.shown = PAGE_ROWS;
  for (const url of state.thumbs.values()) if (typeof url === "string") URL.revokeObjectURL(url);
  state.thumbs = new Map();
  $("results").hidden = true;
  $("progress").hidden = true;
  $("batch-bar").hidden = true;
  $("dropzone").hidden = false;
  $("file-input").value = "";
}

// The drop zone folds to a bar naming the job, with a link that reopens it.
function showJob(jobId) {
  $("dropzone").hidden = true;
  $("batch-bar").hidden = false;
  $("job-link").textContent = jobId;
  $("job-link").href = `/?job=${encodeURIComponent(jobId)}`;
  history.replaceState(null, "", `/?job=${encodeURIComponent(jobId)}`);
}

async function start(files) {
  if (!files.length) return;
  reset();
  $("dropzone").hidden = true;
  $("progress").hidden = false;
  setBar("upload-bar", "upload-text", 0, 1, "");
  setBar("job-bar", "job-text", 0, 1, "");
  $("job-status").textContent = "uploading…";
  for (const file of files) await indexThumbnails(file);
  try {
    const job = await upload(files);
    showJob(job.id);
    await follow(job.id);
  } catch (error) {
    $("job-status").textContent = "";
    $("progress").hidden = true;  // no half-filled bars left behind an error
    if (!state.job) $("dropzone").hidden = false;
    showError(error.message);
  }
}

// A job opened by its link (/?job=<id>): its progress, then its results.
async function reopen(jobId) {
  showJob(jobId);
  $("progress").hidden = false;
  setBar("upload-bar", "upload-text", 1, 1, "uploaded");
  $("job-status").textContent = "";
  try {
    await follow(jobId);
  } catch (error) {
    showError(error.message);
  }
}

$("new-batch").addEventListener("click", () => {
  reset();
  history.replaceState(null, "", "/");
  $("dropzone").focus();
});
const opened = new URLSearchParams(location.search).get("job");
if (opened) reopen(opened);

function setBar(barId, textId, done, total, text) {
  $(barId).max = Math.max(total, 1);
  $(barId).value = done;
  $(textId).textContent = text;
}

function upload(files) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    if (files.length === 1) form.append("file", files[0]);
    else for (const file of files) form.append("files", file);
    const request = new XMLHttpRequest();  // fetch() cannot report upload progress
    request.open("POST", "/jobs");
    for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
    request.upload.onprogress = (event) => {
      if (!event.lengthComputable) return;
      const mb = (bytes) => (bytes / 1048576).toFixed(1);
      setBar("upload-bar", "upload-text", event.loaded, event.total, `${mb(event.loaded)} / ${mb(event.total)} MB`);
    };
    request.onload = async () => {
      const response = new Response(request.responseText, { status: request.status, statusText: request.statusText });
      if (request.status === 202) resolve(JSON.parse(request.responseText));
      else reject(new Error(await apiError(response)));
    };
    request.onerror = () => reject(new Error("the upload failed: the server could not be reached"));
    request.send(form);
  });
}

const isRunning = (job) => ["queued", "running"].includes(job.status);
const sleep = (ms) => new Promise((wake) => setTimeout(wake, ms));

// Each state of the job as it changes: from its event stream (fetch, so the key goes
// in a header), or by polling where the stream is not to be had.
async function* jobStates(jobId) {
  try {
    const response = await fetch(`/jobs/${jobId}/events`, { headers: authHeaders() });
    if (!response.ok || !response.body) throw new Error(await apiError(response));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
        const data = buffer.slice(0, end).split("\n")
          .filter((line) => line.startsWith("data:")).map((line) => line.slice(5)).join("");
        buffer = buffer.slice(end + 2);
        if (!data) continue;
        const job = JSON.parse(data);
        if (job.error) throw new Error(job.error.message);
        yield job;
        if (!isRunning(job)) return;
      }
    }
  } catch (_) { /* poll instead */ }
  for (;;) {
    const job = await getJSON(`/jobs/${jobId}`);
    yield job;
    if (!isRunning(job)) return;
    await sleep(500);
  }
}

async function follow(jobId) {
  for await (const job of jobStates(jobId)) {
    state.job = job;
    const done = job.succeeded + job.failed + job.skipped;
    const left = job.eta_seconds != null ? `, ~${Math.ceil(job.eta_seconds)} s left` : "";
    setBar("job-bar", "job-text", done, job.total, `${done} / ${job.total}`);
    $("job-status").textContent = describeJob(job) + left;
    $("job-status").dataset.jobId = job.id;
  }
  await loadResults(jobId);
}

// What a job's state means, in words: "20 classified, 1 failed".
function describeJob(job) {
  const parts = [`${job.succeeded} classified`];
  if (job.failed) parts.push(`${job.failed} failed`);
  if (job.skipped) parts.push(`${job.skipped} skipped`);
  const counts = parts.join(", ");
  switch (job.status) {
    case "queued": return "waiting for a worker…";
    case "running": return `classifying: ${counts}`;
    case "cancelled": return `cancelled: ${counts}`;
    case "failed": return `no image could be classified: ${job.failed} failed`;
    default: return `done: ${counts}`;
  }
}

async function loadResults(jobId) {
  const items = [];
  let cursor = null;
  do {
    const query = new URLSearchParams({ limit: "1000" });
    if (cursor) query.set("cursor", cursor);
    const page = await getJSON(`/jobs/${jobId}/results?${query}`);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  items.forEach((item, position) => { item.position = position; });
  state.items = items;
  const classes = new Set();
  for (const item of items) if (item.scores) Object.keys(item.scores).forEach((name) => classes.add(name));
  const filter = $("filter");
  filter.replaceChildren(new Option("all", ""), ...[...classes].sort().map((name) => new Option(name, name)), new Option("failed", "!failed"));
  $("results").hidden = false;
  render();
}

// ---- the table ----
function visibleItems() {
  const wanted = $("filter").value;
  let items = state.items.filter((item) => {
    if (!wanted) return true;
    if (wanted === "!failed") return item.status !== "succeeded";
    return item.class === wanted;
  });
  const by = $("sort").value;
  const confidence = (item) => (item.confidence == null ? -1 : item.confidence);
  if (by === "confidence-desc") items = items.sort((a, b) => confidence(b) - confidence(a));
  else if (by === "confidence-asc") items = items.sort((a, b) => confidence(a) - confidence(b));
  else if (by === "filename") items = items.sort((a, b) => a.filename.localeCompare(b.filename));
  else items = items.sort((a, b) => a.position - b.position);
  return items;
}

function render() {
  const items = visibleItems();
  const rows = items.slice(0, state.shown).map(renderRow);
  $("rows").replaceChildren(...rows);
  $("more").hidden = items.length <= state.shown;
  const job = state.job;
  $("counts").textContent = `${items.length} of ${state.items.length} shown` +
    (job ? ` · ${job.succeeded} classified, ${job.failed} failed${job.skipped ? `, ${job.skipped} skipped` : ""}` : "");
}

function renderRow(item) {
  const row = document.createElement("tr");
  row.dataset.class = item.class || "";
  const thumb = document.createElement("td");
  thumb.className = "thumb";
  const image = document.createElement("img");
  image.alt = "";
  image.loading = "lazy";
  thumbnailFor(item.filename).then((url) => { if (url) image.src = url; });
  thumb.append(image);
  const file = document.createElement("td");
  file.className = "file";
  file.textContent = item.filename;
  file.title = item.filename;  // the whole path, on hover or a long tap
  file.tabIndex = 0;
  file.addEventListener("click", () => file.classList.toggle("open"));
  const label = document.createElement("td");
  label.className = "label";
  const confidence = document.createElement("td");
  if (item.status === "succeeded") {
    label.textContent = item.class;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(item.confidence * 100).toFixed(1)}%`;
    bar.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(item.confidence * 100).toFixed(1)}%`;
    const wrap = document.createElement("div");
    wrap.className = "confidence";
    wrap.append(bar, pct);
    confidence.append(wrap);
    const runnerUp = secondClass(item.scores);
    if (runnerUp) {  // the class it was next most sure of: where a look is worth it
      const second = document.createElement("span");
      second.className = "second";
      second.textContent = `then ${runnerUp[0]} ${(runnerUp[1] * 100).toFixed(1)}%`;
      confidence.append(second);
    }
  } else {
    label.textContent = item.status;
    label.classList.add("failed");
    confidence.textContent = item.error || "";
    confidence.classList.add("failed");
  }
  row.append(thumb, file, label, confidence);
  return row;
}

// The runner-up: [class, probability], or null without scores.
function secondClass(scores) {
  if (!scores) return null;
  const ranked = Object.entries(scores).sort((a, b) => b[1] - a[1]);
  return ranked.length > 1 ? ranked[1] : null;
}

$("filter").addEventListener("change", () => { state.shown = PAGE_ROWS; render(); });
$("sort").addEventListener("change", render);
$("more").addEventListener("click", () => { state.shown += PAGE_ROWS; render(); });

$("download").addEventListener("click", async () => {
  if (!state.job) return;
  const response = await fetch(`/jobs/${state.job.id}/results?format=csv`, { headers: authHeaders() });
  if (!response.ok) { showError(await apiError(response)); return; }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = `${state.job.id}.csv`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
});

// ---- thumbnails of what was dropped: images directly, zip entries read in the browser ----
const IMAGE_NAME = /\.(jpe?g|png|gif|webp|bmp)$/i;

async function indexThumbnails(file) {
  const head = new Uint8Array(await file.slice(0, 4).arrayBuffer());
  const isZip = head[0] === 0x50 && head[1] === 0x4b && (head[2] === 3 || head[2] === 5);
  if (!isZip) { state.thumbs.set(file.name, URL.createObjectURL(file)); return; }
  try { await indexZip(file); } catch (_) { /* no thumbnails; the server judges the zip */ }
}

async function indexZip(file) {
  const buffer = await file.arrayBuffer();
  const view = new DataView(buffer);
  let end = -1;
  for (let at = buffer.byteLength - 22; at >= Math.max(0, buffer.byteLength - 65557); at--) {
    if (view.getUint32(at, true) === 0x06054b50) { end = at; break; }
  }
  if (end < 0) return;
  const count = view.getUint16(end + 10, true);
  let at = view.getUint32(end + 16, true);
  const names = new TextDecoder();
  for (let n = 0; n < count && view.getUint32(at, true) === 0x02014b50; n++) {
    const method = view.getUint16(at + 10, true);
    const size = view.getUint32(at + 20, true);
    const nameLength = view.getUint16(at + 28, true);
    const skip = view.getUint16(at + 30, true) + view.getUint16(at + 32, true);
    const local = view.getUint32(at + 42, true);
    const name = names.decode(new Uint8Array(buffer, at + 46, nameLength));
    at += 46 + nameLength + skip;
    if (!IMAGE_NAME.test(name) || (method !== 0 && method !== 8)) continue;
    const start = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
    if (!state.thumbs.has(name)) state.thumbs.set(name, { buffer, start, size, method });
  }
}

async function thumbnailFor(name) {
  const entry = state.thumbs.get(name);
  if (!entry || typeof entry === "string") return entry;
  // Decompressed only when its row is drawn, so a zip of thousands costs little.
  let bytes = new Uint8Array(entry.buffer, entry.start, entry.size);
  if (entry.method === 8) {
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
    bytes = new Uint8Array(await new Response(stream).arrayBuffer());
  }
  const url = URL.createObjectURL(new Blob([bytes]));
  state.thumbs.set(name, url);
  return url;
}

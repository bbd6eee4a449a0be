// slidepress web page: plain JS, no libraries, no network beyond this service.
"use strict";

const $ = (sel) => document.querySelector(sel);
// Every URL is relative to the page (`api/...`, not `/api/...`): behind a reverse proxy the
// service may live under a sub-path.
let token = sessionStorage.getItem("slidepress-token") || "";
let signedIn = false;
let selectedJob = null;
let detailShown = "";  // "<job id> <state>" the results panel was last drawn for
let detailSeq = 0;  // drawing of the results panel; a newer one wins over an older, slower one
let pollTimer = null;
let uploadNames = {};  // upload id -> file name, for the jobs' "on SLIDE" line
let resultNames = {};  // result id -> file name (results seen on this page)
let chosenResults = [];  // results chosen as inputs of the next job ("Use this result as input")
let lastJobs = [];  // the jobs as last listed (newest first)
const objectUrls = [];
const ACTIVE = ["queued", "running"];
const SESSION_ENDED = "The service no longer accepts your API token (it was revoked or has " +
  "expired). Please sign in again with a valid token.";

function showError(msg) {
  const el = $("#error");
  el.textContent = msg;
  el.hidden = !msg;
  if (msg) el.focus && el.setAttribute("tabindex", "-1");
}

function detail(body, status) {
  if (body && body.detail !== undefined) {
    if (Array.isArray(body.detail)) {
      return body.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    }
    return String(body.detail);
  }
  return `request failed (${status})`;
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {
    throw new Error(`cannot reach the service: ${e.message}`);
  }
  if (resp.status === 204) return null;
  if (resp.status === 401 && signedIn) throw endSession();
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = new Error(detail(data, resp.status));
    err.status = resp.status;
    throw err;
  }
  return data;
}

async function blobUrl(path) {
  const resp = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  if (resp.status === 401 && signedIn) throw endSession();
  if (!resp.ok) throw new Error(detail(await resp.json().catch(() => ({})), resp.status));
  const url = URL.createObjectURL(await resp.blob());
  objectUrls.push(url);
  return url;
}

function fmtBytes(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(2) + " GB";
  if (n >= 1e6) return (n / 1e6).toFixed(2) + " MB";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + " kB";
  return n + " B";
}

function cell(row, text, label) {
  const td = document.createElement("td");
  td.setAttribute("role", "cell");
  if (label) td.dataset.label = label;  // the card layout of narrow screens shows it
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  e.append(...children);
  return e;
}

function button(text, label, onclick) {
  const b = el("button", { type: "button", textContent: text, onclick });
  b.setAttribute("aria-label", label);
  return b;
}

const pad = (n) => String(n).padStart(2, "0");

// local time as YYYY-MM-DD HH:MM; `seconds` since the epoch (the API's timestamps)
function fmtTime(seconds) {
  if (!seconds) return "";
  const d = new Date(seconds * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function fmtDuration(seconds) {
  if (seconds < 0.1) return "< 0.1 s";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

function stateBadge(state) {
  return el("span", { className: `state ${state}`, textContent: state });
}

// what a job does, from its request: "compress: jpeg, quality 50" / "encode: mean-rgb, zarr"
function jobSettings(j) {
  const p = j.params || {};
  const parts = [];
  if (j.kind === "compare") {
    parts.push(p.encoder);
  } else if (j.kind === "export") {
    parts.push(p.format, `JPEG quality ${p.quality} where re-encoded`);
  } else if (j.kind === "compress") {
    const c = codecs.find((x) => x.name === p.codec);
    const q = p.quality !== null && p.quality !== undefined ? `quality ${p.quality}`
      : c && c.default_quality !== null ? `quality ${c.default_quality} (default)` : "default quality";
    parts.push(p.codec, q);
    if (p.ms_ssim) parts.push("MS-SSIM");
  } else {
    parts.push(p.encoder, p.format);
    if (p.augment && p.augment !== "none") parts.push(`augment ${p.augment}`);
    if (p.patch_size) parts.push(`patch ${p.patch_size} px`);
  }
  if (p.mpp_override) parts.push(`mpp ${p.mpp_override}`);
  return `${j.kind}: ${parts.filter((x) => x !== undefined && x !== null).join(", ")}`;
}

function jobSlides(j) {
  const names = (j.uploads || []).map((u) => uploadNames[u] || `upload ${u.slice(0, 8)} (deleted)`)
    .concat((j.results || []).map((r) => resultNames[r] || `result ${r.slice(0, 8)}`));
  const shown = names.slice(0, 2).join(", ");
  return names.length > 2 ? `on ${shown} and ${names.length - 2} more` : `on ${shown}`;
}

function progressBar(j, label) {
  const wrap = el("span", { className: "progress" });
  const bar = el("progress", { max: 1 });
  if (j.state === "running") bar.value = j.progress;  // queued: indeterminate
  bar.setAttribute("aria-label", label);
  const pct = el("span", { textContent: j.state === "running" ? `${Math.round(100 * j.progress)} %` : "waiting" });
  wrap.append(bar, pct);
  return wrap;
}

// -- sign in ---------------------------------------------------------------------------------
async function signIn(candidate) {
  token = candidate;
  signedIn = false;
  try {
    const me = await api("GET", "api/me");
    sessionStorage.setItem("slidepress-token", token);
    signedIn = true;
    $("#who").textContent = `signed in as ${me.user}`;
    $("#signin-section").hidden = true;
    $("#app").hidden = false;
    $("#signout").hidden = false;
    showError("");
    await loadOptions();
    await refreshUploads();
    await refreshJobs();
    $("#file").focus();
  } catch (e) {
    if (e.sessionEnded) return;  // revoked between the sign-in and the first listing
    token = "";
    signedIn = false;
    sessionStorage.removeItem("slidepress-token");
    showError(e.status === 401 ? "Sign-in failed: the token is wrong or revoked." : e.message);
    $("#token").focus();
  }
}

// The service answered 401 to a signed-in page: the token was revoked (or the user deleted).
// Back to the sign-in form with a plain message; returns the error for the caller to throw.
function endSession() {
  const err = Object.assign(new Error(SESSION_ENDED), { status: 401, sessionEnded: true });
  if (!signedIn) return err;
  signedIn = false;
  token = "";
  sessionStorage.removeItem("slidepress-token");
  clearTimeout(pollTimer);
  for (const u of objectUrls.splice(0)) URL.revokeObjectURL(u);
  $("#who").textContent = "";
  $("#signout").hidden = true;
  $("#app").hidden = true;
  $("#detail").hidden = true;
  closeViewer();
  selectedJob = null;
  detailShown = "";
  $("#signin-section").hidden = false;
  $("#token").value = "";
  showError(SESSION_ENDED);
  $("#token").focus();
  return err;
}

function signOut() {
  sessionStorage.removeItem("slidepress-token");
  location.reload();
}

// -- options -----------------------------------------------------------------------------------
// Names come from /api/options (with summaries and quality ranges); every option's default,
// range and help come from the request models in /openapi.json, which the service builds from
// the same spec as the command line's options (slidepress.jobs.options).
let codecs = [];
async function loadOptions() {
  const opts = await api("GET", "api/options");
  const fill = (sel, values) => {
    sel.innerHTML = "";
    for (const v of values) {
      const o = document.createElement("option");
      o.value = v.name || v;
      o.textContent = v.name || v;
      if (v.summary) o.title = v.summary;
      sel.appendChild(o);
    }
  };
  fill($("#encoder"), opts.encoders);
  fill($("#cmp-encoder"), opts.encoders);
  fill($("#format"), opts.formats);
  codecs = opts.codecs;
  fill($("#codec"), codecs);
  const schemas = (await api("GET", "openapi.json")).components.schemas;
  for (const el of document.querySelectorAll("[data-option]")) {
    const model = schemas[el.closest("[data-request]").dataset.request];
    applySchema(el, model.properties[el.dataset.option], fill);
  }
  showRange();
}

function applySchema(el, prop, fill) {
  // an optional option is anyOf [its type, null]: its range sits on the first
  const t = (prop.anyOf || [prop]).find((b) => b.type !== "null") || prop;
  el.title = prop.description || "";
  if (el.tagName === "SELECT" && t.enum) fill(el, t.enum);
  if (el.type === "number") {
    const min = t.minimum !== undefined ? t.minimum : t.exclusiveMinimum;
    if (min !== undefined) el.min = min;
    if (t.maximum !== undefined) el.max = t.maximum;
    if (t.multipleOf !== undefined) el.step = t.multipleOf;
  }
  if (prop.default === null || prop.default === undefined) return;
  if (el.type === "checkbox") el.checked = prop.default;
  else if (el.tagName === "SELECT") el.value = prop.default;
  else el.placeholder = String(prop.default);
}

function showRange() {
  const c = codecs.find((c) => c.name === $("#codec").value);
  if (!c) return;
  const [lo, hi] = c.quality_range;
  $("#quality").min = lo;
  $("#quality").max = hi;
  $("#quality-range").textContent = `range ${lo}-${hi}` +
    (c.default_quality !== null ? `, default ${c.default_quality}` : "");
}

// -- uploads ------------------------------------------------------------------------------------
// Files of RESUMABLE_FROM bytes or more go through the resumable API in parts of PART_BYTES
// (like the Python client): a part that fails (connection lost, 5xx, 409) asks the server for
// its offset and goes on from there, up to UPLOAD_RETRIES times in a row; another 4xx is final.
// Tests (or a deployment) may set window.slidepressResumableFrom / slidepressUploadPartBytes.
const RESUMABLE_FROM = 64 << 20;
const PART_BYTES = 8 << 20;
const UPLOAD_RETRIES = 5;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const uploadSetting = (name, dflt) => {
  const v = Number(window[name]);
  return window[name] !== undefined && window[name] !== null && Number.isFinite(v) && v >= 0 ? v : dflt;
};

// one XHR: resolves {status, body}; rejects only when the connection is lost
function sendXhr(method, url, data, headers, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    for (const [k, v] of Object.entries(headers || {})) xhr.setRequestHeader(k, v);
    if (onProgress) xhr.upload.onprogress = (ev) => { if (ev.lengthComputable) onProgress(ev.loaded, ev.total); };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) { /* keep {} */ }
      resolve({ status: xhr.status, body });
    };
    xhr.onerror = () => reject(new Error("upload failed: connection lost"));
    xhr.onabort = xhr.onerror;
    xhr.send(data === undefined ? null : data);
  });
}

function uploadError(r) {
  if (r.status === 401 && signedIn) return endSession();
  const err = new Error(detail(r.body, r.status));
  err.status = r.status;
  return err;
}

const retriable = (status) => status >= 500 || status === 409;

function showUploadProgress(fraction) {
  const bar = $("#upload-progress");
  bar.value = Math.min(1, fraction);
  $("#upload-status").textContent = `${Math.round(100 * bar.value)} %`;
}

async function uploadFile(file) {
  const bar = $("#upload-progress");
  bar.hidden = false;
  bar.value = 0;
  if (file.size > 0 && file.size >= uploadSetting("slidepressResumableFrom", RESUMABLE_FROM)) {
    return uploadParts(file, Math.max(1, uploadSetting("slidepressUploadPartBytes", PART_BYTES)));
  }
  const r = await sendXhr("POST", `api/uploads?filename=${encodeURIComponent(file.name)}`, file,
    { "Content-Type": "application/octet-stream" }, (loaded, total) => showUploadProgress(loaded / total));
  if (r.status >= 200 && r.status < 300) return r.body;
  throw uploadError(r);
}

async function uploadParts(file, partBytes) {
  const size = file.size;
  const bar = $("#upload-progress");
  const open = await sendXhr("POST",
    `api/uploads/resumable?filename=${encodeURIComponent(file.name)}&size=${size}`);
  if (open.status < 200 || open.status >= 300) throw uploadError(open);
  const where = `api/uploads/resumable/${encodeURIComponent(open.body.id)}`;
  let offset = open.body.offset || 0;
  let failures = 0;
  const giveUp = (err) => {
    fetch(where, { method: "DELETE", headers: { Authorization: `Bearer ${token}` } }).catch(() => {});
    return err;
  };
  // after a failed part: wait a little, then ask where the server is (it may be back shortly)
  const resume = async (err) => {
    while (true) {
      if (failures >= UPLOAD_RETRIES) throw giveUp(err);
      failures += 1;
      $("#upload-status").textContent =
        `connection lost, resuming from ${Math.floor(100 * offset / size)} %`;
      await sleep(Math.min(2 ** failures * 100, 5000));
      let r;
      try { r = await sendXhr("GET", where); } catch (e) { err = e; continue; }
      if (r.status >= 200 && r.status < 300) {
        offset = r.body.offset;
        $("#upload-status").textContent =
          `connection lost, resuming from ${Math.floor(100 * offset / size)} %`;
        bar.value = offset / size;
        return;
      }
      if (!retriable(r.status)) throw uploadError(r);
      err = uploadError(r);
    }
  };
  bar.value = offset / size;
  while (true) {
    const end = Math.min(offset + partBytes, size);
    let r;
    try {
      r = await sendXhr("PUT", where, file.slice(offset, end), {
        "Content-Type": "application/octet-stream",
        "Content-Range": `bytes ${offset}-${end - 1}/${size}`,
      }, (loaded) => showUploadProgress((offset + loaded) / size));
    } catch (e) {
      await resume(e);
      continue;
    }
    if (r.status >= 200 && r.status < 300) {
      failures = 0;
      if (r.body.upload) {
        bar.value = 1;
        return r.body.upload;
      }
      offset = r.body.offset;
      showUploadProgress(offset / size);
    } else if (retriable(r.status)) {
      await resume(uploadError(r));
    } else {
      throw giveUp(uploadError(r));
    }
  }
}

async function refreshUploads() {
  const rows = await api("GET", "api/uploads");
  uploadNames = Object.fromEntries(rows.map((u) => [u.id, u.filename]));
  const orig = $("#cmp-original"), keep = orig.value;
  orig.replaceChildren(el("option", { value: "", textContent: "the result's own source" }),
    ...rows.filter((u) => u.kind !== "container").map((u) => el("option", { value: u.id, textContent: u.filename })));
  orig.value = rows.some((u) => u.id === keep) ? keep : "";
  const body = $("#uploads tbody");
  const checked = new Set([...body.querySelectorAll("input:checked")].map((i) => i.value));
  body.innerHTML = "";
  $("#no-uploads").hidden = rows.length > 0;
  for (const u of rows) {
    const tr = document.createElement("tr");
    tr.setAttribute("role", "row");
    const td = cell(tr, "", "Use");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = u.id;
    box.id = `use-${u.id}`;
    box.checked = checked.has(u.id) || rows.length === 1;
    box.setAttribute("aria-label", `use ${u.filename}`);
    td.appendChild(box);
    cell(tr, u.filename, "File").className = "name";
    cell(tr, u.kind, "Type");
    cell(tr, fmtBytes(u.bytes), "Size").className = "num";
    const del = button("Delete", `delete ${u.filename}`, async () => {
      try { await api("DELETE", `api/uploads/${u.id}`); await refreshUploads(); await refreshJobs(); }
      catch (e) { showError(e.message); }
    });
    cell(tr, "").appendChild(del);
    body.appendChild(tr);
  }
}

// -- jobs ---------------------------------------------------------------------------------------
function jobBody() {
  const kind = document.querySelector("input[name=kind]:checked").value;
  const uploads = [...document.querySelectorAll("#uploads tbody input:checked")].map((i) => i.value);
  const body = { kind, uploads, results: chosenResults.map((r) => r.id) };
  const mpp = $("#mpp").value;
  if (mpp && kind !== "export") body.mpp_override = Number(mpp);
  if (kind === "compare") {
    body.encoder = $("#cmp-encoder").value;
    if ($("#cmp-tissue").value) body.tissue_threshold = Number($("#cmp-tissue").value);
    // one original for every input, or each result's own source
    if ($("#cmp-original").value) body.originals = [...uploads, ...body.results].map(() => $("#cmp-original").value);
  } else if (kind === "export") {
    body.format = $("#exp-format").value;
    if ($("#exp-quality").value) body.quality = Number($("#exp-quality").value);
  } else if (kind === "encode") {
    body.encoder = $("#encoder").value;
    body.augment = $("#augment").value;
    body.format = $("#format").value;
    if ($("#patch").value) body.patch_size = Number($("#patch").value);
  } else {
    body.codec = $("#codec").value;
    if ($("#quality").value) body.quality = Number($("#quality").value);
    if ($("#msssim").checked) body.ms_ssim = true;
  }
  return body;
}

// the state column: its badge, then a bar while queued or running, how long it took once done
function stateCell(tr, j) {
  const box = el("div", { className: "stack" }, stateBadge(j.state));
  if (ACTIVE.includes(j.state)) box.append(progressBar(j, `progress of job ${j.id.slice(0, 8)}`));
  else if (j.started_at && j.finished_at) {
    box.append(el("span", { className: "hint took", textContent: `took ${fmtDuration(j.finished_at - j.started_at)}` }));
  }
  cell(tr, "", "State").appendChild(box);
}

async function refreshJobs() {
  const jobs = (await api("GET", "api/jobs")).reverse();
  lastJobs = jobs;
  const body = $("#jobs tbody");
  body.innerHTML = "";
  $("#no-jobs").hidden = jobs.length > 0;
  for (const j of jobs) {
    const short = j.id.slice(0, 8);
    const tr = document.createElement("tr");
    tr.setAttribute("role", "row");
    tr.dataset.job = j.id;
    tr.dataset.state = j.state;
    if (j.id === selectedJob) tr.className = "selected";
    cell(tr, "", "Job").appendChild(button(short, `show job ${short}`, () => showJob(j.id)));
    const what = cell(tr, "", "Settings");
    what.className = "name";
    what.append(el("div", {}, el("span", { textContent: jobSettings(j) }),
      el("span", { className: "slides", textContent: jobSlides(j) })));
    cell(tr, fmtTime(j.created_at), "Created").className = "when";
    stateCell(tr, j);
    const msg = cell(tr, j.error || j.message, "Message");
    msg.className = j.error && j.state === "failed" ? "name failed-text" : "name";
    const td = cell(tr, "");
    td.className = "actions";
    if (ACTIVE.includes(j.state)) {
      td.appendChild(button("Cancel", `cancel job ${short}`, async () => {
        try { await api("POST", `api/jobs/${j.id}/cancel`); await refreshJobs(); }
        catch (e) { showError(e.message); }
      }));
    } else {
      td.appendChild(button("Delete", `delete job ${short}`, async () => {
        try {
          await api("DELETE", `api/jobs/${j.id}`);
          if (selectedJob === j.id) closeDetail();
          await refreshJobs();
        } catch (e) { showError(e.message); }
      }));
    }
    body.appendChild(tr);
  }
  const active = jobs.some((j) => ACTIVE.includes(j.state));
  clearTimeout(pollTimer);
  if (active) pollTimer = setTimeout(() => refreshJobs().catch((e) => showError(e.message)), 1000);
  if (selectedJob) {
    const j = jobs.find((x) => x.id === selectedJob);
    if (!j) closeDetail();
    else if (ACTIVE.includes(j.state)) drawDetailHead(j);  // progress and message, every poll
    else if (detailShown !== `${j.id} ${j.state}`) await showJob(j.id);  // it just finished
  }
}

function closeDetail() {
  selectedJob = null;
  detailShown = "";
  detailSeq++;
  for (const u of objectUrls.splice(0)) URL.revokeObjectURL(u);
  $("#detail").hidden = true;
  closeViewer();
}

// the results panel's heading, state, progress, settings and error: from a job's JSON
function drawDetailHead(j) {
  const short = j.id.slice(0, 8);
  $("#detail-h").textContent = ACTIVE.includes(j.state) ? `Job ${short}` : `Results of job ${short}`;
  const status = $("#detail-status");
  status.innerHTML = "";
  status.append(stateBadge(j.state));
  if (ACTIVE.includes(j.state)) status.append(progressBar(j, `progress of job ${short}`));
  if (j.message && !(j.state === "failed" && j.error)) status.append(el("span", { textContent: j.message }));
  const times = [`created ${fmtTime(j.created_at)}`];
  if (j.finished_at && j.started_at) times.push(`took ${fmtDuration(j.finished_at - j.started_at)}`);
  $("#detail-what").textContent = `${jobSettings(j)}; ${jobSlides(j)}; ${times.join(", ")}`;
  const err = $("#detail-error");
  err.textContent = j.error || "";
  err.hidden = !j.error;
  $("#detail").dataset.state = j.state;
  $("#detail").hidden = false;
}

function metric(dl, name, value) {
  if (value === undefined || value === null || value === "") return;
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dd.dataset.metric = name;
  dl.append(dt, dd);
}

async function showJob(id) {
  const seq = ++detailSeq;
  selectedJob = id;
  for (const tr of document.querySelectorAll("#jobs tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.job === id);
  }
  const j = await api("GET", `api/jobs/${id}`);
  if (seq !== detailSeq) return;  // another job was picked meanwhile
  if (viewerJob && viewerJob !== id) closeViewer();
  for (const u of objectUrls.splice(0)) URL.revokeObjectURL(u);
  detailShown = `${j.id} ${j.state}`;
  drawDetailHead(j);
  const dl = $("#metrics");
  dl.innerHTML = "";
  const prev = $("#previews");
  prev.innerHTML = "";
  const list = $("#downloads");
  list.innerHTML = "";
  $("#viewers-open").innerHTML = "";
  for (const o of j.outcomes) {
    const repeated = o.error && j.error && j.error.includes(o.error);  // shown above already
    metric(dl, "slide", `${o.slide}: ${o.status}${o.error && !repeated ? " - " + o.error : ""}`);
    if (j.kind === "compress" && o.status !== "failed") {
      metric(dl, "ratio vs source", o.ratio ? `${o.ratio}x` : "");
      if (o.bpp) metric(dl, "ratio vs raw 24 bpp", `${(24 / o.bpp).toFixed(1)}x`);
      metric(dl, "bits per pixel", o.bpp);
      metric(dl, "PSNR (dB, whole slide)", typeof o.psnr_db === "number" ? o.psnr_db.toFixed(2) : o.psnr_db);
      metric(dl, "MS-SSIM", typeof o.ms_ssim === "number" ? o.ms_ssim.toFixed(4) : "");
    }
    if (j.kind === "encode" && o.status !== "failed") metric(dl, "tissue cells", o.count);
    if (j.kind === "compare" && o.status !== "failed") compareFigures(dl, o);
    if (j.kind === "export" && o.status !== "failed") {
      metric(dl, "format", `${o.format}: ${o.codestream}`);
      metric(dl, "tiles", `${o.tiles_copied} copied, ${o.tiles_reencoded} re-encoded, ${o.tiles_filled} glass tiles filled`);
      if (o.tiles_reencoded) metric(dl, "re-encoding loss (PSNR, dB)", typeof o.reencode_psnr_db === "number" ? o.reencode_psnr_db.toFixed(2) : o.reencode_psnr_db);
    }
  }
  if (j.state !== "succeeded") return;
  const results = await api("GET", `api/jobs/${id}/results`);
  if (seq !== detailSeq) return;
  for (const r of results) resultNames[r.id] = r.name;
  if (j.kind === "compare") compareViewerButtons(j, results);
  for (const r of results) {
    const url = `api/results/${r.id}`;  // not r.url: that one is absolute
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = "#";
    a.textContent = `${r.name} (${fmtBytes(r.bytes)})`;
    a.onclick = (ev) => { ev.preventDefault(); download(url, r.name).catch((e) => showError(e.message)); };
    li.appendChild(a);
    list.appendChild(li);
    if (r.role === "container") {
      viewerButton(j, r);
      $("#viewers-open").appendChild(button("Use this result as input", `use ${r.name} as the input of a new job`, () => useResult(r)));
    }
    if (r.role === "preview") {
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      const kind = r.name.endsWith(".pca.png") ? "PCA of the embedding grid (RGB)"
        : r.name.endsWith(".tissue.png") ? "thumbnail with the tissue mask"
        : r.name.endsWith(".compare.png") ? "original (left) vs reconstruction (right)"
        : j.kind === "compare" && r.name === "heatmap.png" ? "per-cell cosine of the grid over the original (blue: 1, red: 0.95 or less)" : r.name;
      img.alt = `${kind}: ${r.slide}`;
      img.className = r.name.endsWith(".compare.png") ? "compare" : "";
      img.dataset.result = r.name;
      img.src = await blobUrl(url);
      if (seq !== detailSeq) return;
      const cap = document.createElement("figcaption");
      cap.textContent = kind;
      fig.append(img, cap);
      prev.appendChild(fig);
    }
  }
  const li = document.createElement("li");
  const all = document.createElement("a");
  all.href = "#";
  all.textContent = "everything as one zip";
  all.onclick = (ev) => { ev.preventDefault(); download(`api/jobs/${id}/download`, `slidepress-${id.slice(0, 8)}.zip`).catch((e) => showError(e.message)); };
  li.appendChild(all);
  list.appendChild(li);
}

// -- side-by-side viewer (static/viewer.js) ------------------------------------------------------
// What a container was made from: the outcome that lists it among its outputs names the
// upload, or the container result of an earlier job that it transcoded.
let viewers = [];
let viewerJob = null;

function viewerButton(j, r) {
  const o = j.outcomes.find((x) => String(x.outputs || "").split(";").includes(r.name));
  const b = button("View side by side", `View side by side: ${r.slide || r.name}, original and compressed`,
    () => openViewer(j, r, o).catch((e) => showError(e.message)));
  if (!o || !(o.result || uploadNames[o.upload])) {
    b.disabled = true;
    b.title = "the original upload was deleted";
  }
  $("#viewers-open").appendChild(b);
}

async function tileFetch(url) {
  const resp = await fetch(url, { headers: { Authorization: `Bearer ${token}` } });
  if (resp.status === 401 && signedIn) throw endSession();
  return resp;
}

async function openViewer(j, r, o) {
  const p = j.params || {};
  const fig = (dl) => {
    metric(dl, "PSNR (dB, whole slide)", typeof o.psnr_db === "number" ? o.psnr_db.toFixed(2) : o.psnr_db);
    metric(dl, "MS-SSIM", typeof o.ms_ssim === "number" ? o.ms_ssim.toFixed(4) : "");
    metric(dl, "tiles stored", o.count !== undefined ? `${o.count} (${o.tiles_dropped || 0} left out as glass)` : "");
    metric(dl, "bits per pixel", o.bpp);
    metric(dl, "ratio vs source", o.ratio ? `${o.ratio}x` : "");
  };
  // the newest compare job of this container offers its heat map as an overlay
  const cmp = lastJobs.find((x) => x.kind === "compare" && x.state === "succeeded" && (x.results || []).includes(r.id));
  await showSideBySide({
    job: j.id,
    original: o.upload ? `api/uploads/${o.upload}/deepzoom` : `api/results/${o.result}/deepzoom`,
    originalCaption: o.upload ? `original: ${uploadNames[o.upload] || o.slide}` : `source: ${o.slide} (an earlier container)`,
    compressed: `api/results/${r.id}/deepzoom`,
    compressedCaption: `compressed: ${r.name} (${p.codec}` + (o.ratio ? `, ${o.ratio}x smaller)` : ")"),
    figures: fig,
    compare: cmp ? async () => compareOverlay(cmp, await api("GET", `api/jobs/${cmp.id}/results`), r.id) : null,
  });
}

// -- compare jobs: figures, the side-by-side viewer with the heat map -----------------------------
function fmt(v, digits) { return typeof v === "number" ? v.toFixed(digits) : v; }

function compareFigures(dl, o) {
  metric(dl, "grid cells compared", o.count);
  metric(dl, "cosine mean", fmt(o.cosine_mean, 5));
  metric(dl, "cosine 5th percentile", fmt(o.cosine_p5, 5));
  metric(dl, "worst cell", fmt(o.cosine_min, 5));
  metric(dl, "PSNR over tissue (dB, grid resolution)", fmt(o.psnr_tissue, 2));
  metric(dl, "encoder", o.encoder);
}

// one "View side by side" per compared slide: its original and its container, heat map on
function compareViewerButtons(j, results) {
  const inputs = [...(j.uploads || []).map((id) => ({ upload: id })), ...(j.results || []).map((id) => ({ result: id }))];
  j.outcomes.forEach((o, i) => {
    if (o.status === "failed") return;
    const input = inputs[i] || {}, orig = (j.originals || [])[i] || {};
    const original = orig.upload ? `api/uploads/${orig.upload}/deepzoom` : orig.result ? `api/results/${orig.result}/deepzoom` : null;
    const compressed = input.upload ? `api/uploads/${input.upload}/deepzoom` : `api/results/${input.result}/deepzoom`;
    const b = button("View side by side", `View side by side: ${o.slide}, original and compressed, with the heat map`, () => showSideBySide({
      job: j.id, original, compressed,
      originalCaption: `original: ${orig.label || ""}`,
      compressedCaption: `compressed: ${o.slide}`,
      figures: (dl) => {
        const c = containerFacts(o);
        if (c) metric(dl, "container", c);
        metric(dl, "PSNR (dB, whole slide, from the container)", fmt(o.container_psnr_db, 2));
        metric(dl, "MS-SSIM (from the container)", fmt(o.container_ms_ssim, 4));
        compareFigures(dl, o);
      },
      compare: async () => compareOverlay(j, results, input.result || input.upload),
      overlayOn: true,
    }).catch((e) => showError(e.message)));
    if (!original) { b.disabled = true; b.title = "the original is not known"; }
    $("#viewers-open").appendChild(b);
  });
}

function containerFacts(o) {
  if (!o.container_codec) return "";
  const q = o.container_quality !== undefined ? ` q${o.container_quality}` : "";
  const tiles = o.container_tiles_stored !== undefined ? `, ${o.container_tiles_stored} of ${o.container_tiles_total} tiles stored` : "";
  return `${o.container_codec}${q}${tiles}`;
}

// The overlay of compare job `j` for input `input` (a result or upload id): cosine.npy drawn
// one pixel per cell (jet colours, the heat map's scale), placed by compare.json's geometry.
async function compareOverlay(j, results, input) {
  const k = Math.max(0, [...(j.uploads || []), ...(j.results || [])].indexOf(input));
  const slide = (j.outcomes[k] || {}).slide;
  const mine = results.filter((x) => x.slide === slide);
  const npy = mine.find((x) => x.role === "cosine"), doc = mine.find((x) => x.role === "summary");
  if (!npy || !doc) throw new Error("this compare job has no per-cell cosine to show");
  const [buf, summary] = await Promise.all([
    tileFetch(`api/results/${npy.id}`).then(okBody).then((r) => r.arrayBuffer()),
    tileFetch(`api/results/${doc.id}`).then(okBody).then((r) => r.json()),
  ]);
  const { rows, cols, data } = parseNpy(buf);
  const g = summary.grid, floor = summary.heat_floor || 0.95;
  const img = document.createElement("canvas");
  img.width = cols;
  img.height = rows;
  const ctx = img.getContext("2d"), px = ctx.createImageData(cols, rows);
  for (let i = 0; i < rows * cols; i++) {
    const v = data[i];
    if (!Number.isFinite(v)) continue;  // no cell kept: transparent
    const [cr, cg, cb] = jet(1 - Math.min(1, Math.max(0, (v - floor) / (1 - floor))));
    px.data.set([cr, cg, cb, 255], i * 4);
  }
  ctx.putImageData(px, 0, 0);
  return { image: img, cell: g.cell_stride_px, slideWidth: g.slide_size[0], alpha: 0.55, visible: false,
    scale: `cosine 1 (blue) to ${floor} or less (red); mean ${fmt(summary.mean, 5)}, worst ${fmt(summary.min, 5)}; ${summary.encoder}, cells of ${g.patch_size} px at ${fmt(g.effective_mpp, 3)} um/px` };
}

async function okBody(resp) {
  if (!resp.ok) throw new Error(detail(await resp.json().catch(() => ({})), resp.status));
  return resp;
}

// matplotlib's 'jet' (what heatmap.png uses), t in [0, 1]
function jet(t) {
  const c = (x) => Math.round(255 * Math.min(1, Math.max(0, x)));
  return [c(1.5 - Math.abs(4 * t - 3)), c(1.5 - Math.abs(4 * t - 2)), c(1.5 - Math.abs(4 * t - 1))];
}

// a (rows, cols) little-endian float32 .npy, C order (what compare writes)
function parseNpy(buf) {
  const bytes = new Uint8Array(buf), view = new DataView(buf);
  if (bytes[0] !== 0x93 || String.fromCharCode(...bytes.subarray(1, 6)) !== "NUMPY") throw new Error("not a .npy file");
  const wide = bytes[6] >= 2, len = wide ? view.getUint32(8, true) : view.getUint16(8, true);
  const start = wide ? 12 : 10, header = new TextDecoder().decode(bytes.subarray(start, start + len));
  const shape = header.match(/'shape':\s*\((\d+),\s*(\d+)\)/);
  if (!/'descr':\s*'<f4'/.test(header) || /'fortran_order':\s*True/.test(header) || !shape) {
    throw new Error(`unexpected cosine array: ${header.trim()}`);
  }
  const rows = Number(shape[1]), cols = Number(shape[2]);
  return { rows, cols, data: new Float32Array(buf.slice(start + len, start + len + 4 * rows * cols)) };
}

// the two synced viewers: `original` and `compressed` DeepZoom bases, their captions, the
// figures beside them, and optionally `compare()` -> an overlay for the compressed view
async function showSideBySide(v) {
  closeViewer();
  viewerJob = v.job;
  $("#cap-original").textContent = v.originalCaption;
  $("#cap-compressed").textContent = v.compressedCaption;
  const dl = $("#fidelity");
  dl.innerHTML = "";
  v.figures(dl);
  $("#overlay-choice").hidden = true;
  $("#overlay-legend").hidden = true;
  $("#overlay").checked = false;
  $("#viewer").hidden = false;
  const onError = (e) => { if (!e.sessionEnded) showError(`viewer: ${e.message}`); };
  viewers = [
    new DeepZoomViewer($("#dz-original"), { base: v.original, fetchTile: tileFetch, onError, label: "original slide" }),
    new DeepZoomViewer($("#dz-compressed"), { base: v.compressed, fetchTile: tileFetch, onError, label: "compressed slide" }),
  ];
  window.slidepressViewers = viewers;
  const mine = viewers;
  const [overlay] = await Promise.all([v.compare ? v.compare().catch((e) => { showError(`heat map: ${e.message}`); return null; }) : null,
    ...viewers.map((x) => x.ready)]);
  if (viewers !== mine) return;  // closed or replaced meanwhile
  DeepZoomViewer.sync(viewers);
  viewers[0].home(false);
  if (overlay) {
    viewers[1].setOverlay(overlay);
    $("#overlay-scale").textContent = overlay.scale;
    $("#overlay-choice").hidden = false;
    $("#overlay").checked = Boolean(v.overlayOn);
    showOverlay();
  }
  $("#viewer").scrollIntoView({ block: "start" });
}

function showOverlay() {
  const on = $("#overlay").checked;
  $("#overlay-legend").hidden = !on;
  if (viewers[1]) viewers[1].showOverlay(on);
}

// -- results as inputs ----------------------------------------------------------------------------
function useResult(r) {
  if (!chosenResults.some((x) => x.id === r.id)) chosenResults.push({ id: r.id, name: r.name });
  resultNames[r.id] = r.name;
  for (const box of document.querySelectorAll("#uploads tbody input:checked")) box.checked = false;
  drawChosenResults();
  $("#job").scrollIntoView({ block: "start" });
  document.querySelector("input[name=kind]:checked").focus();
}

function drawChosenResults() {
  const list = $("#result-list");
  list.replaceChildren(...chosenResults.map((r) => el("li", { textContent: r.name },
    button("\u00d7", `remove ${r.name} from the inputs`, () => {
      chosenResults = chosenResults.filter((x) => x.id !== r.id);
      drawChosenResults();
    }))));
  $("#result-inputs").hidden = chosenResults.length === 0;
}

function closeViewer() {
  for (const v of viewers) v.close();
  viewers = [];
  viewerJob = null;
  window.slidepressViewers = [];
  $("#viewer").hidden = true;
}

async function download(url, name) {
  const href = await blobUrl(url);
  const a = document.createElement("a");
  a.href = href;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
}

// -- wiring -------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("#signin").addEventListener("submit", (ev) => { ev.preventDefault(); signIn($("#token").value.trim()); });
  $("#signin-fields").disabled = false;
  $("#signout").addEventListener("click", signOut);
  $("#codec").addEventListener("change", showRange);
  $("#zoom-in").addEventListener("click", () => viewers.length && viewers[0].zoomBy(2));
  $("#zoom-out").addEventListener("click", () => viewers.length && viewers[0].zoomBy(0.5));
  $("#zoom-fit").addEventListener("click", () => viewers.length && viewers[0].home());
  $("#viewer-close").addEventListener("click", closeViewer);
  $("#overlay").addEventListener("change", showOverlay);
  for (const r of document.querySelectorAll("input[name=kind]")) {
    r.addEventListener("change", () => {
      const kind = document.querySelector("input[name=kind]:checked").value;
      for (const k of ["encode", "compress", "compare", "export"]) $(`#${k}-opts`).hidden = k !== kind;
      $("#mpp").closest("p").hidden = kind === "export";  // a container records its resolution
    });
  }
  $("#upload").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const file = $("#file").files[0];
    if (!file) return;
    showError("");
    $("#upload-status").textContent = "uploading...";
    const bar = $("#upload-progress");
    try {
      const u = await uploadFile(file);
      $("#upload-status").textContent = `uploaded ${u.filename}`;
      await refreshUploads();
      const box = document.getElementById(`use-${u.id}`);
      if (box) box.checked = true;
    } catch (e) {
      bar.hidden = true;  // a full bar would say it worked
      bar.value = 0;
      $("#upload-status").textContent = e.sessionEnded ? "" : `upload of ${file.name} failed`;
      showError(e.message);
    }
  });
  $("#job").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError("");
    const body = jobBody();
    if (!body.uploads.length && !body.results.length) {
      showError("Select at least one upload, or use a result as input.");
      return;
    }
    try {
      const j = await api("POST", "api/jobs", body);
      chosenResults = [];
      drawChosenResults();
      selectedJob = j.id;
      await refreshJobs();
      await showJob(j.id);
    } catch (e) {
      showError(e.message);
    }
  });
  if (token) signIn(token);
});

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
  if (j.kind === "compress") {
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
  const names = (j.uploads || []).map((u) => uploadNames[u] || `upload ${u.slice(0, 8)} (deleted)`);
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
  const body = { kind, uploads };
  const mpp = $("#mpp").value;
  if (mpp) body.mpp_override = Number(mpp);
  if (kind === "encode") {
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
  }
  if (j.state !== "succeeded") return;
  const results = await api("GET", `api/jobs/${id}/results`);
  if (seq !== detailSeq) return;
  for (const r of results) {
    const url = `api/results/${r.id}`;  // not r.url: that one is absolute
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = "#";
    a.textContent = `${r.name} (${fmtBytes(r.bytes)})`;
    a.onclick = (ev) => { ev.preventDefault(); download(url, r.name).catch((e) => showError(e.message)); };
    li.appendChild(a);
    list.appendChild(li);
    if (r.role === "container") viewerButton(j, r);
    if (r.role === "preview") {
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      const kind = r.name.endsWith(".pca.png") ? "PCA of the embedding grid (RGB)"
        : r.name.endsWith(".tissue.png") ? "thumbnail with the tissue mask"
        : r.name.endsWith(".compare.png") ? "original (left) vs reconstruction (right)" : r.name;
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
  closeViewer();
  viewerJob = j.id;
  const p = j.params || {};
  const source = o.upload ? `api/uploads/${o.upload}/deepzoom` : `api/results/${o.result}/deepzoom`;
  $("#cap-original").textContent = o.upload ? `original: ${uploadNames[o.upload] || o.slide}`
    : `source: ${o.slide} (an earlier container)`;
  $("#cap-compressed").textContent = `compressed: ${r.name} (${p.codec}` +
    (o.ratio ? `, ${o.ratio}x smaller)` : ")");
  const dl = $("#fidelity");
  dl.innerHTML = "";
  metric(dl, "PSNR (dB, whole slide)", typeof o.psnr_db === "number" ? o.psnr_db.toFixed(2) : o.psnr_db);
  metric(dl, "MS-SSIM", typeof o.ms_ssim === "number" ? o.ms_ssim.toFixed(4) : "");
  metric(dl, "tiles stored", o.count !== undefined ? `${o.count} (${o.tiles_dropped || 0} left out as glass)` : "");
  metric(dl, "bits per pixel", o.bpp);
  metric(dl, "ratio vs source", o.ratio ? `${o.ratio}x` : "");
  $("#viewer").hidden = false;
  const onError = (e) => { if (!e.sessionEnded) showError(`viewer: ${e.message}`); };
  viewers = [
    new DeepZoomViewer($("#dz-original"), { base: source, fetchTile: tileFetch, onError, label: "original slide" }),
    new DeepZoomViewer($("#dz-compressed"), { base: `api/results/${r.id}/deepzoom`, fetchTile: tileFetch, onError, label: "compressed slide" }),
  ];
  window.slidepressViewers = viewers;
  await Promise.all(viewers.map((v) => v.ready));
  DeepZoomViewer.sync(viewers);
  viewers[0].home(false);
  $("#viewer").scrollIntoView({ block: "start" });
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
  for (const r of document.querySelectorAll("input[name=kind]")) {
    r.addEventListener("change", () => {
      const enc = document.querySelector("input[name=kind]:checked").value === "encode";
      $("#encode-opts").hidden = !enc;
      $("#compress-opts").hidden = enc;
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
    if (!body.uploads.length) { showError("Select at least one upload."); return; }
    try {
      const j = await api("POST", "api/jobs", body);
      selectedJob = j.id;
      await refreshJobs();
      await showJob(j.id);
    } catch (e) {
      showError(e.message);
    }
  });
  if (token) signIn(token);
});

// slidepress web page: plain JS, no libraries, no network beyond this service.
"use strict";

const $ = (sel) => document.querySelector(sel);
let token = sessionStorage.getItem("slidepress-token") || "";
let selectedJob = null;
let pollTimer = null;
const objectUrls = [];

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

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

// -- sign in ---------------------------------------------------------------------------------
async function signIn(candidate) {
  token = candidate;
  try {
    const me = await api("GET", "/api/me");
    sessionStorage.setItem("slidepress-token", token);
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
    token = "";
    sessionStorage.removeItem("slidepress-token");
    showError(e.status === 401 ? "Sign-in failed: the token is wrong or revoked." : e.message);
    $("#token").focus();
  }
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
  const opts = await api("GET", "/api/options");
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
  const schemas = (await api("GET", "/openapi.json")).components.schemas;
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
function uploadFile(file) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/uploads?filename=${encodeURIComponent(file.name)}`);
    xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    const bar = $("#upload-progress");
    bar.hidden = false;
    bar.value = 0;
    xhr.upload.onprogress = (ev) => {
      if (ev.lengthComputable) {
        bar.value = ev.loaded / ev.total;
        $("#upload-status").textContent = `${Math.round(100 * bar.value)} %`;
      }
    };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) { /* keep {} */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new Error(detail(body, xhr.status)));
    };
    xhr.onerror = () => reject(new Error("upload failed: connection lost"));
    xhr.send(file);
  });
}

async function refreshUploads() {
  const rows = await api("GET", "/api/uploads");
  const body = $("#uploads tbody");
  const checked = new Set([...body.querySelectorAll("input:checked")].map((i) => i.value));
  body.innerHTML = "";
  for (const u of rows) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = u.id;
    box.id = `use-${u.id}`;
    box.checked = checked.has(u.id) || rows.length === 1;
    box.setAttribute("aria-label", `use ${u.filename}`);
    td.appendChild(box);
    tr.appendChild(td);
    cell(tr, u.filename);
    cell(tr, u.kind);
    cell(tr, fmtBytes(u.bytes));
    const del = document.createElement("button");
    del.type = "button";
    del.textContent = "Delete";
    del.setAttribute("aria-label", `delete ${u.filename}`);
    del.onclick = async () => {
      try { await api("DELETE", `/api/uploads/${u.id}`); await refreshUploads(); }
      catch (e) { showError(e.message); }
    };
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

async function refreshJobs() {
  const jobs = (await api("GET", "/api/jobs")).reverse();
  const body = $("#jobs tbody");
  body.innerHTML = "";
  for (const j of jobs) {
    const tr = document.createElement("tr");
    tr.dataset.job = j.id;
    tr.dataset.state = j.state;
    if (j.id === selectedJob) tr.className = "selected";
    const show = document.createElement("button");
    show.type = "button";
    show.textContent = j.id.slice(0, 8);
    show.setAttribute("aria-label", `show job ${j.id.slice(0, 8)}`);
    show.onclick = () => showJob(j.id);
    cell(tr, "").appendChild(show);
    cell(tr, j.kind);
    cell(tr, j.state).className = `state ${j.state}`;
    const prog = document.createElement("progress");
    prog.max = 1;
    prog.value = j.progress;
    prog.setAttribute("aria-label", `progress of job ${j.id.slice(0, 8)}`);
    cell(tr, "").appendChild(prog);
    cell(tr, j.error || j.message);
    const td = cell(tr, "");
    if (j.state === "queued" || j.state === "running") {
      const cancel = document.createElement("button");
      cancel.type = "button";
      cancel.textContent = "Cancel";
      cancel.onclick = async () => {
        try { await api("POST", `/api/jobs/${j.id}/cancel`); await refreshJobs(); }
        catch (e) { showError(e.message); }
      };
      td.appendChild(cancel);
    }
    body.appendChild(tr);
  }
  const active = jobs.some((j) => j.state === "queued" || j.state === "running");
  clearTimeout(pollTimer);
  if (active) pollTimer = setTimeout(() => refreshJobs().catch((e) => showError(e.message)), 1000);
  if (selectedJob) {
    const j = jobs.find((x) => x.id === selectedJob);
    if (j && !$("#detail").dataset.final && ["succeeded", "failed", "cancelled"].includes(j.state)) {
      await showJob(selectedJob);
    }
  }
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
  selectedJob = id;
  for (const u of objectUrls.splice(0)) URL.revokeObjectURL(u);
  const j = await api("GET", `/api/jobs/${id}`);
  const sec = $("#detail");
  sec.hidden = false;
  sec.dataset.final = ["succeeded", "failed", "cancelled"].includes(j.state) ? "1" : "";
  $("#detail-h").textContent = `Results of job ${id.slice(0, 8)} (${j.kind}, ${j.state})`;
  const dl = $("#metrics");
  dl.innerHTML = "";
  const prev = $("#previews");
  prev.innerHTML = "";
  const list = $("#downloads");
  list.innerHTML = "";
  metric(dl, "message", j.message);
  metric(dl, "error", j.error);
  for (const o of j.outcomes) {
    metric(dl, "slide", `${o.slide}: ${o.status}${o.error ? " - " + o.error : ""}`);
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
  const results = await api("GET", `/api/jobs/${id}/results`);
  for (const r of results) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = "#";
    a.textContent = `${r.name} (${fmtBytes(r.bytes)})`;
    a.onclick = (ev) => { ev.preventDefault(); download(r.url, r.name).catch((e) => showError(e.message)); };
    li.appendChild(a);
    list.appendChild(li);
    if (r.role === "preview") {
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      const kind = r.name.endsWith(".pca.png") ? "PCA of the embedding grid (RGB)"
        : r.name.endsWith(".tissue.png") ? "thumbnail with the tissue mask"
        : r.name.endsWith(".compare.png") ? "original (left) vs reconstruction (right)" : r.name;
      img.alt = `${kind}: ${r.slide}`;
      img.className = r.name.endsWith(".compare.png") ? "compare" : "";
      img.dataset.result = r.name;
      img.src = await blobUrl(r.url);
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
  all.onclick = (ev) => { ev.preventDefault(); download(`/api/jobs/${id}/download`, `slidepress-${id.slice(0, 8)}.zip`).catch((e) => showError(e.message)); };
  li.appendChild(all);
  list.appendChild(li);
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
  $("#signout").addEventListener("click", signOut);
  $("#codec").addEventListener("change", showRange);
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
    try {
      const u = await uploadFile(file);
      $("#upload-status").textContent = `uploaded ${u.filename}`;
      await refreshUploads();
      const box = document.getElementById(`use-${u.id}`);
      if (box) box.checked = true;
    } catch (e) {
      $("#upload-status").textContent = "";
      showError(e.message);
    }
  });
  $("#job").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError("");
    const body = jobBody();
    if (!body.uploads.length) { showError("Select at least one upload."); return; }
    try {
      const j = await api("POST", "/api/jobs", body);
      selectedJob = j.id;
      await refreshJobs();
      await showJob(j.id);
    } catch (e) {
      showError(e.message);
    }
  });
  if (token) signIn(token);
});

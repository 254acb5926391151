// latentdiff web app: four panels posting requests to /api/jobs and polling their progress.
"use strict";
const $ = (sel, root = document) => root.querySelector(sel);
let INFO = null;

// --- panels and shared options ------------------------------------------------------------------
function showPanel(kind) {
  document.querySelectorAll(".panel").forEach(p => p.classList.toggle("active", p.id === "panel-" + kind));
  document.querySelectorAll(".tab").forEach(t => t.classList.toggle("active", t.dataset.panel === kind));
  location.hash = kind;
}

function buildOptions(box) {
  const kind = box.dataset.kind;
  box.appendChild($("#opts-template").content.cloneNode(true));
  box.querySelectorAll("[name]").forEach(el => { el.id = `${kind}-${el.name}`; });
  const sampler = $("select[name=sampler]", box);
  for (const s of INFO.samplers) sampler.add(new Option(s, s, false, s === INFO.defaults.sampler));
  $("[name=steps]", box).value = INFO.defaults.steps;
  $("[name=steps]", box).max = INFO.limits.max_steps;
  $("[name=guidance]", box).value = INFO.defaults.guidance;
  $("[name=num_images]", box).max = INFO.limits.max_images;
  $("[name=width]", box).value = INFO.defaults.width;
  $("[name=height]", box).value = INFO.defaults.height;
  if (!box.dataset.size) $(".size", box).remove();
  $(".random-seed", box).onclick = () => { $("[name=seed]", box).value = Math.floor(Math.random() * 2 ** 31); };
  const ids = { generate: "generate", cancel: "cancel", progress: "progress", status: "status", error: "error",
                gallery: "gallery" };
  for (const [cls, id] of Object.entries(ids)) $("." + cls, box).id = `${kind}-${id}`;
  $(".generate", box).onclick = () => submit(kind, box);
}

function readOptions(box) {
  const req = {};
  box.querySelectorAll("[name]").forEach(el => { req[el.name] = el.value; });
  return req;
}

function showError(kind, message) {
  const el = $(`#${kind}-error`);
  el.textContent = message || "";
  el.hidden = !message;
}

// --- requests, progress, cancel -----------------------------------------------------------------
// The server takes JSON bodies only (a cross-origin page cannot send this type without a preflight it
// refuses); the token, when the server needs one, travels in its HttpOnly cookie.
const JSON_HEADERS = { "Content-Type": "application/json" };

async function submit(kind, box) {
  showError(kind, "");
  let req;
  try { req = { ...readOptions(box), ...EXTRA[kind](), kind }; }
  catch (e) { showError(kind, e.message); return; }
  const gen = $(`#${kind}-generate`);
  gen.disabled = true;
  let reply;
  try {
    const r = await fetch("/api/jobs", { method: "POST", headers: JSON_HEADERS, body: JSON.stringify(req) });
    reply = await r.json();
    if (!r.ok) throw new Error(reply.error || `HTTP ${r.status}`);
  } catch (e) { showError(kind, e.message); gen.disabled = false; return; }
  const cancel = $(`#${kind}-cancel`);
  cancel.disabled = false;
  cancel.onclick = () => fetch(`/api/jobs/${reply.id}/cancel`, { method: "POST", headers: JSON_HEADERS, body: "{}" });
  await poll(kind, reply.id);
  cancel.disabled = true;
  gen.disabled = false;
}

async function poll(kind, id) {
  const bar = $(`#${kind}-progress`), status = $(`#${kind}-status`);
  for (;;) {
    let job;
    try { job = await (await fetch(`/api/jobs/${id}`)).json(); }
    catch (e) { status.textContent = "lost contact with the server; retrying"; await sleep(1000); continue; }
    if (!job.state) { showError(kind, job.error); status.textContent = ""; return; }  // refused (403, 404)
    bar.value = job.total ? job.done / job.total : 0;
    if (job.state === "queued") status.textContent = `waiting in the queue (position ${job.position})`;
    else if (job.state === "running") status.textContent = `step ${job.done} / ${job.total}`;
    else {
      status.textContent = job.state === "done" ? `done: ${job.images.length} image(s)` : job.state;
      if (job.state === "error") showError(kind, job.error);
      if (job.state === "done") showImages(kind, job.images);
      return;
    }
    await sleep(250);
  }
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

function showImages(kind, images) {
  const gallery = $(`#${kind}-gallery`);
  for (const im of images.slice().reverse()) {
    const fig = document.createElement("figure");
    fig.className = "result";
    const img = new Image();
    img.src = im.url;
    img.alt = im.record.prompt;
    const link = document.createElement("a");
    link.href = im.url; link.download = im.filename; link.textContent = "Download PNG";
    const pre = document.createElement("pre");
    pre.className = "provenance";
    const first = {};  // what people look for first, then the rest of the record
    for (const k of ["prompt", "negative_prompt", "seed", "steps", "guidance", "sampler", "width", "height"])
      if (k in im.record) first[k] = im.record[k];
    pre.textContent = JSON.stringify(Object.assign(first, im.record), null, 1);
    fig.append(img, link, pre);
    gallery.prepend(fig);
  }
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(new Error(`${file.name}: cannot read the file`));
    r.readAsDataURL(file);
  });
}

function loadImage(url) {  // resolves to null when the browser cannot decode it
  return new Promise(resolve => { const im = new Image(); im.onload = () => resolve(im); im.onerror = () => resolve(null); im.src = url; });
}

// --- inpainting: an image and a painted mask -----------------------------------------------------
const inpaint = { imageData: null, maskUpload: null, mask: null, image: null, painted: false };

async function onInpaintImage(file) {
  Object.assign(inpaint, { imageData: await readFile(file), maskUpload: null, mask: null, image: null, painted: false });
  const im = await loadImage(inpaint.imageData);
  const fits = im && Math.max(im.naturalWidth, im.naturalHeight) <= INFO.limits.max_side;
  $("#inpaint-hint").textContent = fits ? `${im.naturalWidth}x${im.naturalHeight}: paint over what to repaint.`
                                        : "No preview for this file; the server will check it.";
  if (!fits) return;
  inpaint.image = im;
  const canvas = $("#inpaint-canvas");
  canvas.width = im.naturalWidth; canvas.height = im.naturalHeight;
  inpaint.mask = document.createElement("canvas");
  inpaint.mask.width = im.naturalWidth; inpaint.mask.height = im.naturalHeight;
  clearMask();
  $("#inpaint-brush").value = Math.max(1, Math.round(im.naturalWidth / 10));
}

function clearMask() {
  inpaint.maskUpload = null; inpaint.painted = false;
  if (!inpaint.mask) return;
  const m = inpaint.mask.getContext("2d");
  m.fillStyle = "#000"; m.fillRect(0, 0, inpaint.mask.width, inpaint.mask.height);
  drawInpaint();
}

function drawInpaint() {  // the image with the mask shown in translucent red
  const canvas = $("#inpaint-canvas"), ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(inpaint.image, 0, 0);
  const tmp = document.createElement("canvas");
  tmp.width = canvas.width; tmp.height = canvas.height;
  const t = tmp.getContext("2d");
  t.drawImage(inpaint.mask, 0, 0);
  const px = t.getImageData(0, 0, tmp.width, tmp.height);
  for (let i = 0; i < px.data.length; i += 4) {
    const v = px.data[i];
    px.data[i] = 255; px.data[i + 1] = 0; px.data[i + 2] = 0; px.data[i + 3] = v * 0.55;
  }
  t.putImageData(px, 0, 0);
  ctx.drawImage(tmp, 0, 0);
}

function paintAt(e) {
  const canvas = $("#inpaint-canvas"), r = canvas.getBoundingClientRect();
  const x = (e.clientX - r.left) / r.width * canvas.width, y = (e.clientY - r.top) / r.height * canvas.height;
  const m = inpaint.mask.getContext("2d");
  m.fillStyle = "#fff";
  m.beginPath(); m.arc(x, y, $("#inpaint-brush").value / 2, 0, 2 * Math.PI); m.fill();
  inpaint.painted = true; inpaint.maskUpload = null;
  drawInpaint();
}

function setupInpaint() {
  $("#inpaint-image").onchange = e => e.target.files[0] && onInpaintImage(e.target.files[0]);
  $("#inpaint-mask-file").onchange = async e => {
    if (!e.target.files[0]) return;
    inpaint.maskUpload = await readFile(e.target.files[0]);
    $("#inpaint-hint").textContent = `mask: ${e.target.files[0].name} (uploaded; painting replaces it)`;
  };
  $("#inpaint-clear").onclick = clearMask;
  const canvas = $("#inpaint-canvas");
  let down = false;
  canvas.addEventListener("pointerdown", e => { if (inpaint.mask) { down = true; paintAt(e); } });
  canvas.addEventListener("pointermove", e => { if (down) paintAt(e); });
  window.addEventListener("pointerup", () => { down = false; });
}

// --- layout: boxes drawn on a canvas, each with a phrase -----------------------------------------
const layout = { boxes: [], drag: null };

function drawLayout() {
  const c = $("#layout-canvas"), ctx = c.getContext("2d");
  ctx.fillStyle = "#fafafa"; ctx.fillRect(0, 0, c.width, c.height);
  const all = layout.drag ? [...layout.boxes, layout.drag] : layout.boxes;
  all.forEach((b, i) => {
    const hue = (i * 67) % 360;
    ctx.strokeStyle = `hsl(${hue} 70% 40%)`; ctx.lineWidth = 2;
    ctx.fillStyle = `hsl(${hue} 70% 60% / .2)`;
    const [x, y, w, h] = [b.x0 * c.width, b.y0 * c.height, (b.x1 - b.x0) * c.width, (b.y1 - b.y0) * c.height];
    ctx.fillRect(x, y, w, h); ctx.strokeRect(x, y, w, h);
    ctx.fillStyle = `hsl(${hue} 70% 25%)`; ctx.font = "13px sans-serif";
    ctx.fillText(`${i + 1}. ${b.phrase || ""}`, x + 4, y + 15);
  });
}

function listBoxes() {
  const ol = $("#layout-boxes");
  ol.innerHTML = "";
  layout.boxes.forEach((b, i) => {
    const li = document.createElement("li");
    const input = document.createElement("input");
    input.className = "phrase"; input.placeholder = "what goes in this box"; input.value = b.phrase;
    input.oninput = () => { b.phrase = input.value; drawLayout(); };
    const del = document.createElement("button");
    del.type = "button"; del.textContent = "remove";
    del.onclick = () => { layout.boxes.splice(i, 1); listBoxes(); drawLayout(); };
    li.append(input, del);
    ol.append(li);
  });
}

function setupLayout() {
  const c = $("#layout-canvas");
  const at = e => { const r = c.getBoundingClientRect();
    return [Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)), Math.min(1, Math.max(0, (e.clientY - r.top) / r.height))]; };
  let start = null;
  c.addEventListener("pointerdown", e => { start = at(e); });
  c.addEventListener("pointermove", e => {
    if (!start) return;
    const [x, y] = at(e);
    layout.drag = { x0: Math.min(start[0], x), y0: Math.min(start[1], y), x1: Math.max(start[0], x), y1: Math.max(start[1], y), phrase: "" };
    drawLayout();
  });
  window.addEventListener("pointerup", () => {
    if (layout.drag && layout.drag.x1 - layout.drag.x0 > 0.02 && layout.drag.y1 - layout.drag.y0 > 0.02) {
      layout.boxes.push(layout.drag); listBoxes();
      $("#layout-boxes li:last-child input").focus();
    }
    start = null; layout.drag = null; drawLayout();
  });
  $("#layout-clear").onclick = () => { layout.boxes = []; listBoxes(); drawLayout(); };
  drawLayout();
}

// --- segmentation map -----------------------------------------------------------------------------
const segmap = { data: null };

// Class indices 0..4 are near-black as grey levels: the preview paints them in the shapes palette.
const CLASS_COLOURS = [[245, 245, 245], [220, 60, 60], [60, 110, 220], [60, 170, 80], [230, 190, 40]];

function previewSegmap(url) {
  const img = new Image();
  img.onload = () => {
    const c = $("#segmap-preview"), ctx = c.getContext("2d");
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, c.width, c.height), d = px.data;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i] === d[i + 1] && d[i] === d[i + 2] && d[i] < CLASS_COLOURS.length) {
        [d[i], d[i + 1], d[i + 2]] = CLASS_COLOURS[d[i]];
      }
    }
    ctx.putImageData(px, 0, 0);
    c.hidden = false;
  };
  img.src = url;
}

function setupSegmap() {
  $("#segmap-file").onchange = async e => {
    if (!e.target.files[0]) return;
    segmap.data = await readFile(e.target.files[0]);
    previewSegmap(segmap.data);
  };
}

// What each panel adds to the shared options.
const EXTRA = {
  txt2img: () => ({}),
  inpaint: () => {
    if (!inpaint.imageData) throw new Error("image: upload an image first");
    let mask = inpaint.maskUpload;
    if (!mask && inpaint.mask) {
      if (!inpaint.painted) throw new Error("mask: paint over the part to repaint (or upload a mask)");
      mask = inpaint.mask.toDataURL("image/png");
    }
    return { image: inpaint.imageData, mask };
  },
  layout: () => ({ boxes: layout.boxes.map(b => ({ ...b })), layout_scale: $("#layout-scale").value }),
  segmap: () => ({ segmap: segmap.data, segmap_scale: $("#segmap-scale").value,
                   region_phrases: $("#segmap-regions").checked }),
};

function markUnavailable() {
  for (const what of ["layout", "segmap"]) {
    if (INFO.features[what]) continue;
    const note = $(`#${what}-unavailable`);
    note.hidden = false;
    note.textContent = `Not available with this model: ${INFO.unavailable[what]}.`;
    $(`#${what}-generate`).disabled = true;
  }
}

async function main() {
  const r = await fetch("/api/info");
  INFO = await r.json();
  if (!r.ok) {  // e.g. a server bound beyond loopback opened without its token
    const el = $("#page-error");
    el.textContent = INFO.error || `HTTP ${r.status}`;
    el.hidden = false;
    document.body.dataset.ready = "error";
    return;
  }
  $("#model-name").textContent = `model: ${INFO.model}`;
  $("#layout-scale").value = INFO.layout_scale;  // the layout checkpoint's default guidance scale
  $("#inpaint-model").textContent = INFO.inpaint_dedicated
    ? `Repainted by the inpainting model ${INFO.inpaint_model}.`
    : `Repainted by ${INFO.inpaint_model}, blending its samples into the image (no dedicated inpainting model).`;
  document.querySelectorAll(".opts").forEach(buildOptions);
  if (INFO.region_guidance != null) {  // blank: the server picks region phrases' own guidance, as the CLI does
    const g = $("#segmap-guidance");
    g.value = "";
    g.placeholder = "auto";
    g.title = `blank: ${INFO.region_guidance} when region phrases are drawn, else ${INFO.defaults.guidance}`;
  }
  document.querySelectorAll(".tab").forEach(t => { t.onclick = () => showPanel(t.dataset.panel); });
  setupInpaint(); setupLayout(); setupSegmap(); markUnavailable();
  showPanel((location.hash || "#txt2img").slice(1) in EXTRA ? location.hash.slice(1) || "txt2img" : "txt2img");
  document.body.dataset.ready = "1";
}
main();

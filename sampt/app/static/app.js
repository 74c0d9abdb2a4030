// sampt app: the page. Plain JavaScript, no build step. One session per tab (sessionStorage).
"use strict";

const app = {
  session: null, state: null, frame: 0, selected: null,
  frames: {},      // t -> ImageBitmap
  masks: {},       // t -> {version, image}
  points: {},      // t -> {version, list}
  showMasks: true, showPoints: true, polling: null, busy: false,
};
const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const POINT_RADIUS = 5;

function message(text, isError = true) {
  const box = $("message");
  box.textContent = text || "";
  box.style.color = isError ? "#f88" : "#9c9";
}

async function api(method, path, body, isForm = false) {
  const options = {method, headers: {}};
  if (body !== undefined) {
    if (isForm) options.body = body;
    else { options.body = JSON.stringify(body); options.headers["Content-Type"] = "application/json"; }
  }
  let response;
  try { response = await fetch(path, options); }
  catch (error) { throw new Error("the server cannot be reached (" + error.message + "); is sampt app still running?"); }
  let data = null;
  try { data = await response.json(); } catch (error) { data = null; }
  if (!response.ok) {
    throw new Error((data && data.error) || ("the server answered " + response.status));
  }
  return data;
}
const base = () => "/api/sessions/" + app.session;

async function start() {
  let id = sessionStorage.getItem("sampt-session");
  try {
    if (id) { app.session = id; setState(await api("GET", base())); }
  } catch (error) { id = null; }
  if (!id) {
    try {
      const state = await api("POST", "/api/sessions");
      app.session = state.session; sessionStorage.setItem("sampt-session", app.session); setState(state);
    } catch (error) { message(error.message); return; }
  }
  if (app.state.objects.length === 0) await addObject();
  else app.selected = app.state.objects[0].id;
  renderObjects();
  await showFrame(0);
  if (app.state.job && app.state.job.running) poll();
}

function setState(state) {
  const old = app.state;
  app.state = state;
  if (!old || old.clip.name !== state.clip.name || old.clip.num_frames !== state.clip.num_frames ||
      old.clip.width !== state.clip.width) {
    app.frames = {}; app.masks = {}; app.points = {};
    canvas.width = state.clip.width; canvas.height = state.clip.height;
    $("slider").max = state.clip.num_frames - 1;
    if (app.frame >= state.clip.num_frames) app.frame = 0;
  }
  $("clip-name").textContent = state.clip.name + " (" + state.clip.num_frames + " frames, " +
    state.clip.width + "x" + state.clip.height + ")";
  $("undo").disabled = !state.can_undo;
  $("redo").disabled = !state.can_redo;
  $("limits").textContent = "Uploads: " + state.limits.text + ".";
  $("save-session").href = base() + "/session.json";
  const job = state.job;
  const running = !!(job && job.running);
  $("propagate").disabled = running; $("cancel").disabled = !running;
  const pending = state.up_to_date.filter((ok) => !ok).length;
  if (job) {
    $("progress").max = job.total; $("progress").value = job.done;
    $("progress-label").textContent = running ? ("propagating: " + job.done + " / " + job.total + " frames") :
      (job.error ? "propagation failed" : (job.report && job.report.cancelled ? "cancelled after " + job.done + " frames" :
       "done: " + job.done + " frames"));
    if (job.error) message(job.error);
  }
  if (!running) $("progress-label").textContent += pending ? (job ? " · " : "") + pending + " frame(s) to propagate" : "";
  if (state.last_report) showReport(state.last_report);
  renderObjects();
}

function showReport(r) {
  const parts = [r.kind + ": " + r.seconds.toFixed(3) + " s"];
  if (r.tracker_seconds) parts.push("tracker " + r.tracker_seconds.toFixed(3) + " s");
  if (r.prompts_decoded) parts.push(r.prompts_decoded + " prompt(s) decoded");
  if (r.frames_encoded) parts.push(r.frames_encoded + " frame(s) encoded");
  if (r.frames_resegmented && r.frames_resegmented.length) parts.push(r.frames_resegmented.length + " frame(s) re-segmented");
  if (r.cancelled) parts.push("cancelled");
  $("report").textContent = parts.join(" · ");
}

function renderObjects() {
  const list = $("objects");
  list.innerHTML = "";
  for (const object of app.state.objects) {
    const item = document.createElement("li");
    item.dataset.objectId = object.id;
    if (object.id === app.selected) item.classList.add("selected");
    const swatch = document.createElement("span");
    swatch.className = "swatch"; swatch.style.background = "rgb(" + object.colour.join(",") + ")";
    const info = document.createElement("span");
    info.className = "info";
    info.textContent = "object " + object.id + (object.first_frame === null ? " (click on it)" :
      " · " + object.points + " point(s) · from frame " + object.first_frame);
    const remove = document.createElement("button");
    remove.textContent = "✕"; remove.title = "remove object " + object.id;
    remove.className = "remove-object";
    remove.onclick = (event) => { event.stopPropagation(); removeObject(object.id); };
    item.append(swatch, info, remove);
    item.onclick = () => { app.selected = object.id; renderObjects(); };
    list.append(item);
  }
}

async function loadFrame(t) {
  if (!app.frames[t]) {
    const response = await fetch(base() + "/frames/" + t + ".jpg");
    if (!response.ok) throw new Error("cannot load frame " + t);
    app.frames[t] = await createImageBitmap(await response.blob());
  }
  return app.frames[t];
}

async function loadMask(t) {
  const version = app.state.version;
  const cached = app.masks[t];
  if (cached && cached.version === version) return cached.image;
  const response = await fetch(base() + "/masks/" + t + ".png");
  if (response.status === 202) return null;  // a running propagation has not reached it yet
  if (!response.ok) {
    let text = "cannot compute the masks of frame " + t;
    try { text = (await response.json()).error || text; } catch (error) {}
    throw new Error(text);
  }
  const image = await createImageBitmap(await response.blob());
  if (version === app.state.version) app.masks[t] = {version, image};
  return image;
}

async function loadPoints(t) {
  const version = app.state.version;
  const cached = app.points[t];
  if (cached && cached.version === version) return cached.list;
  const data = await api("GET", base() + "/points/" + t);
  app.points[t] = {version, list: data.points};
  return data.points;
}

async function showFrame(t) {
  t = Math.max(0, Math.min(app.state.clip.num_frames - 1, t));
  app.frame = t;
  $("slider").value = t;
  $("frame-label").textContent = "frame " + t + " / " + (app.state.clip.num_frames - 1) + " (" +
    app.state.clip.frame_names[t] + ")" + (app.state.up_to_date[t] ? "" : " · not propagated");
  try {
    const [frame, mask, points] = await Promise.all([loadFrame(t), app.showMasks ? loadMask(t) : null, loadPoints(t)]);
    if (app.frame !== t) return;  // the user moved on meanwhile
    draw(frame, mask, points);
    // What the canvas shows, for tests to wait on: the frame and the state version drawn.
    document.body.dataset.drawn = t + "@" + app.state.version;
  } catch (error) { message(error.message); }
}

function colourOf(objectId) {
  const object = app.state.objects.find((o) => o.id === objectId);
  return object ? "rgb(" + object.colour.join(",") + ")" : "#fff";
}

function draw(frame, mask, points) {
  ctx.globalAlpha = 1;
  ctx.drawImage(frame, 0, 0);
  if (mask && app.showMasks) { ctx.globalAlpha = 0.55; ctx.drawImage(mask, 0, 0); ctx.globalAlpha = 1; }
  if (!app.showPoints) return;
  for (const p of points) {
    if (p.removed) continue;
    ctx.beginPath();
    if (p.positive) ctx.arc(p.x, p.y, POINT_RADIUS, 0, 2 * Math.PI);
    else ctx.rect(p.x - POINT_RADIUS, p.y - POINT_RADIUS, 2 * POINT_RADIUS, 2 * POINT_RADIUS);
    ctx.lineWidth = 2;
    if (p.visible) {  // visible: filled; occluded (tracked, not prompting): hollow
      ctx.fillStyle = colourOf(p.object); ctx.fill();
      ctx.strokeStyle = p.positive ? "#fff" : "#000"; ctx.stroke();
    } else {
      ctx.strokeStyle = colourOf(p.object); ctx.stroke();
    }
  }
}

function framePosition(event) {
  const rect = canvas.getBoundingClientRect();
  return {x: (event.clientX - rect.left) * canvas.width / rect.width,
          y: (event.clientY - rect.top) * canvas.height / rect.height,
          scale: canvas.width / rect.width};
}

async function run(action) {
  if (app.busy) return;
  app.busy = true;
  try { await action(); }
  catch (error) { message(error.message); }
  finally { app.busy = false; }
}

async function onClick(event, positive) {
  event.preventDefault();
  const where = framePosition(event);
  const t = app.frame;
  await run(async () => {
    const points = (app.points[t] && app.points[t].list) || [];
    const radius = (POINT_RADIUS + 3) * Math.max(1, where.scale);
    const hit = points.find((p) => p.visible && !p.removed && Math.hypot(p.x - where.x, p.y - where.y) <= radius);
    let state;
    if (hit) {
      state = await api("POST", base() + "/points/" + hit.id + "/remove", {frame: t});
    } else {
      if (app.selected === null) throw new Error("add an object first");
      state = await api("POST", base() + "/points",
        {object_id: app.selected, frame: t, x: where.x, y: where.y, positive});
    }
    message("");
    setState(state);
    await showFrame(t);
  });
}

async function addObject() {
  await run(async () => {
    const state = await api("POST", base() + "/objects");
    app.selected = state.new_object;
    setState(state);
  });
}

async function removeObject(id) {
  await run(async () => {
    const state = await api("DELETE", base() + "/objects/" + id);
    if (app.selected === id) app.selected = state.objects.length ? state.objects[0].id : null;
    setState(state);
    await showFrame(app.frame);
  });
}

async function undoRedo(which) {
  await run(async () => {
    setState(await api("POST", base() + "/" + which, {frame: app.frame}));
    if (!app.state.objects.some((o) => o.id === app.selected) && app.state.objects.length) app.selected = app.state.objects[0].id;
    renderObjects();
    await showFrame(app.frame);
  });
}

async function propagate() {
  await run(async () => {
    message("");
    setState(await api("POST", base() + "/propagate"));
    poll();
  });
}

function poll() {
  if (app.polling) return;
  let shown = -1;
  app.polling = setInterval(async () => {
    try {
      const state = await api("GET", base());
      setState(state);
      const job = state.job;
      if (job && job.done !== shown) { shown = job.done; await showFrame(app.frame); }
      if (!job || !job.running) {
        clearInterval(app.polling); app.polling = null;
        await showFrame(app.frame);
        document.body.dataset.propagated = String(state.version);
      }
    } catch (error) { message(error.message); clearInterval(app.polling); app.polling = null; }
  }, 250);
}

async function exportAll() {
  await run(async () => {
    message("exporting…", false);
    const state = await api("POST", base() + "/export");
    setState(state);
    const link = $("export-link");
    link.href = state.export.url; link.textContent = "download export " + state.export.number + " (" +
      state.export.files.length + " files)";
    link.hidden = false;
    message(state.export.notes.join("\n") || "exported", state.export.notes.length > 0);
  });
}

async function upload(input, path, what) {
  const file = input.files[0];
  input.value = "";
  if (!file) return;
  await run(async () => {
    message("opening " + what + " " + file.name + "…", false);
    const form = new FormData();
    form.append("file", file, file.name);
    const state = await api("POST", base() + path, form, true);
    app.frames = {}; app.masks = {}; app.points = {}; app.state = null;
    setState(state);
    app.selected = state.objects.length ? state.objects[0].id : null;
    renderObjects();
    message("");
  });
  if (app.selected === null) await addObject();
  await showFrame(app.state.frame || 0);
}

canvas.addEventListener("click", (event) => onClick(event, !$("negative").checked));
canvas.addEventListener("contextmenu", (event) => onClick(event, false));
$("slider").addEventListener("input", () => showFrame(Number($("slider").value)));
$("prev").onclick = () => showFrame(app.frame - 1);
$("next").onclick = () => showFrame(app.frame + 1);
$("add-object").onclick = addObject;
$("undo").onclick = () => undoRedo("undo");
$("redo").onclick = () => undoRedo("redo");
$("propagate").onclick = propagate;
$("cancel").onclick = () => api("POST", base() + "/cancel").then(setState).catch((e) => message(e.message));
$("export").onclick = exportAll;
$("show-masks").onchange = (e) => { app.showMasks = e.target.checked; showFrame(app.frame); };
$("show-points").onchange = (e) => { app.showPoints = e.target.checked; showFrame(app.frame); };
$("upload").onchange = (e) => upload(e.target, "/upload", "clip");
$("open-session").onchange = (e) => upload(e.target, "/session", "session");
document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT" && event.target.type !== "range" && event.target.type !== "checkbox") return;
  if (event.key === "ArrowLeft") { event.preventDefault(); showFrame(app.frame - 1); }
  else if (event.key === "ArrowRight") { event.preventDefault(); showFrame(app.frame + 1); }
  else if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
    event.preventDefault(); undoRedo(event.shiftKey ? "redo" : "undo");
  } else if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "y") { event.preventDefault(); undoRedo("redo"); }
});
start();

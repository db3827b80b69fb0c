// The playground: a form over POST /v1/videos, a progress bar and preview frames while the job runs
// (polling GET /v1/videos/{id} and its /preview), the finished MP4 in a <video>, and recent jobs.
// Every call goes through `api` so that an API key, when the server asks for one, rides along.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 400;
let current = null; // the job the page follows

function headers() {
  const key = $("api_key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok && response.status !== 204) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

async function blobUrl(path) {
  return URL.createObjectURL(await (await api(path)).blob());
}

function show(text, failed = false) {
  $("status").textContent = text;
  $("status").className = failed ? "error" : "";
}

async function loadModels() {
  try {
    const { data } = await (await api("/v1/models")).json();
    for (const model of data) $("model").add(new Option(model.id, model.id));
  } catch (error) { show(`models: ${error.message}`, true); $("current").hidden = false; }
}

function formData() {
  const form = new FormData();
  form.append("prompt", $("prompt").value);
  form.append("size", `${$("width").value}x${$("height").value}`);
  for (const name of ["negative_prompt", "num_frames", "num_inference_steps", "guidance_scale", "seed"]) {
    const value = $(name).value.trim();
    if (value !== "") form.append(name, value);
  }
  if ($("model").value) form.append("model", $("model").value);
  form.append("preview", "true");
  const image = $("input_reference").files[0];
  if (image) form.append("input_reference", image);
  return form;
}

async function play(video) {
  const source = `/v1/videos/${video.id}/content`;
  const url = await blobUrl(source);
  const player = $("video");
  player.dataset.source = source;
  player.dataset.videoId = video.id;
  player.src = url;
  player.hidden = false;
  $("preview").hidden = true;
  $("download").href = url;
  $("download").download = `${video.id}.mp4`;
  $("download").hidden = false;
  $("progress").value = 100;
  $("current").hidden = false;
  current = video.id;
  show(`${video.id}: completed in ${video.inference_time_s?.toFixed(1) ?? "?"} s, ${video.size}, seed ${video.seed}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Follow one job until it ends; a newer submission (`current` moves on) ends the loop.
async function follow(id) {
  current = id;
  while (current === id) {
    const video = await (await api(`/v1/videos/${id}`)).json();
    $("progress").value = video.progress;
    if (video.status === "completed") return play(video);
    if (video.status === "failed") return show(`${id}: failed: ${video.error?.message}`, true);
    show(`${id}: ${video.status.replace("_", " ")}, ${video.progress}%`);
    const frame = await api(`/v1/videos/${id}/preview`);
    if (frame.status === 200) {
      const preview = $("preview");
      const old = preview.src;
      preview.src = URL.createObjectURL(await frame.blob());
      preview.hidden = false;
      if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    }
    await sleep(POLL_MS);
  }
}

async function submit(event) {
  event.preventDefault();
  $("current").hidden = false;
  $("video").hidden = true;
  $("download").hidden = true;
  $("preview").hidden = true;
  $("progress").value = 0;
  try {
    const video = await (await api("/v1/videos", { method: "POST", body: formData() })).json();
    show(`${video.id}: queued`);
    loadHistory();
    await follow(video.id);
  } catch (error) {
    show(error.message, true);
  }
  loadHistory();
}

async function loadHistory() {
  let page;
  try { page = await (await api("/v1/videos?limit=12")).json(); } catch (_) { return; }
  const list = $("history");
  list.replaceChildren();
  for (const video of page.data) {
    const item = document.createElement("li");
    const thumb = document.createElement("img");
    thumb.alt = video.prompt;
    item.append(thumb, `${video.status} · ${video.size} · ${video.prompt.slice(0, 40)}`);
    item.dataset.videoId = video.id;
    if (video.status === "completed") {
      blobUrl(`/v1/videos/${video.id}/content?variant=thumbnail`).then((url) => { thumb.src = url; }, () => {});
      item.addEventListener("click", () => play(video));
    }
    list.append(item);
  }
}

$("preset").addEventListener("change", () => {
  const [size, frames, steps] = $("preset").value.split(",");
  const [width, height] = size.split("x");
  Object.assign($("width"), { value: width });
  Object.assign($("height"), { value: height });
  $("num_frames").value = frames;
  $("num_inference_steps").value = steps;
});
$("api_key").value = localStorage.getItem("wan-triton-key") || "";
$("api_key").addEventListener("change", () => { localStorage.setItem("wan-triton-key", $("api_key").value); loadModels(); loadHistory(); });
$("job").addEventListener("submit", submit);
loadModels();
loadHistory();

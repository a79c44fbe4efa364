// portrait3d's web page: upload a portrait, watch its job, cancel it, turn the finished head around.
// It uses the service's own API (/v1/heads); status comes as server-sent events read with fetch, so
// that a bearer token can go with them.

const ACTIVE = new Set(["queued", "running"]);
const jobs = new Map(); // id -> last status
const watching = new Set();
let token = sessionStorage.getItem("portrait3d-token") || "";

const $ = (sel) => document.querySelector(sel);

function headers(extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  if (response.status === 401) {
    $("#token-box").hidden = false;
    throw new Error("this service needs an API token");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      message = `${body.error.type}: ${body.error.message}`;
    } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function notice(text) {
  $("#notice").textContent = text || "";
}

function render(job) {
  jobs.set(job.id, job);
  let row = document.querySelector(`tr[data-id="${job.id}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.id = job.id;
    row.innerHTML = `<td class="name"></td><td class="status"></td><td class="stage"></td>
      <td><progress max="1" value="0"></progress></td>
      <td><button class="cancel" type="button">Cancel</button> <button class="view" type="button">View</button></td>`;
    row.querySelector(".cancel").addEventListener("click", () => cancel(job.id));
    row.querySelector(".view").addEventListener("click", () => view(job.id));
    $("#jobs tbody").prepend(row);
  }
  row.querySelector(".name").textContent = (job.input_name || job.id.slice(0, 8)).split("/").pop();
  row.querySelector(".name").title = job.input_name || job.id;
  row.querySelector(".status").textContent = job.status;
  const where = job.status === "queued" && job.queue_position ? `#${job.queue_position} in the queue` :
    job.error ? `${job.error.type}: ${job.error.message}` : [job.stage, job.message].filter(Boolean).join(": ");
  row.querySelector(".stage").textContent = where;
  const done = job.stages_done.length;
  row.querySelector("progress").value = job.status === "done" ? 1 : Math.min(1, (done - 1 + job.progress) / 3);
  row.querySelector(".cancel").hidden = !ACTIVE.has(job.status);
  row.querySelector(".view").hidden = job.status !== "done";
  row.dataset.status = job.status;
}

async function watch(id) {
  if (watching.has(id)) return;
  watching.add(id);
  try {
    const response = await api(`/v1/heads/${id}/events`);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("");
        if (data) render(JSON.parse(data));
      }
    }
  } catch (e) {
    notice(e.message);
  } finally {
    watching.delete(id);
    const job = jobs.get(id);
    if (job && ACTIVE.has(job.status)) setTimeout(() => watch(id), 1000); // the stream broke: go on
  }
}

async function upload(file) {
  notice("");
  const form = new FormData();
  form.append("image", file, file.name);
  try {
    const response = await api("/v1/heads", { method: "POST", body: form });
    const job = await response.json();
    render(job);
    watch(job.id);
  } catch (e) {
    notice(`${file.name}: ${e.message}`);
  }
}

async function cancel(id) {
  try {
    render(await (await api(`/v1/heads/${id}`, { method: "DELETE" })).json());
  } catch (e) {
    notice(e.message);
  }
}

async function view(id) {
  try {
    const blob = await (await api(`/v1/heads/${id}/head.glb`)).blob();
    const viewer = $("#viewer");
    if (viewer.src && viewer.src.startsWith("blob:")) URL.revokeObjectURL(viewer.src);
    viewer.removeAttribute("data-loaded");
    viewer.src = URL.createObjectURL(blob);
    $("#viewer-label").textContent = `head ${id.slice(0, 8)}: drag to turn it around`;
    viewer.dataset.job = id;
  } catch (e) {
    notice(e.message);
  }
}

async function refresh() {
  try {
    const page = await (await api("/v1/heads?limit=50")).json();
    for (const job of page.items.reverse()) {
      render(job);
      if (ACTIVE.has(job.status)) watch(job.id);
    }
  } catch (e) {
    notice(e.message);
  }
}

function setUp() {
  const drop = $("#drop");
  $("#file").addEventListener("change", (e) => { for (const f of e.target.files) upload(f); e.target.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    for (const f of e.dataTransfer.files) upload(f);
  });
  $("#save-token").addEventListener("click", () => {
    token = $("#token").value.trim();
    sessionStorage.setItem("portrait3d-token", token);
    $("#token-box").hidden = true;
    refresh();
  });
  $("#viewer").addEventListener("load", (e) => { e.target.dataset.loaded = "1"; });
  refresh();
}

setUp();

// Live refresh: every few seconds the page is fetched again and each element marked data-live
// (with an id) is replaced by its new version. Forms are never marked live, so what the
// operator is typing stays. The backlog plot keeps its samples in this page only.
"use strict";

const REFRESH_MS = 2000;
const PLOT_SAMPLES = 1800; // an hour at one sample every two seconds
const samples = [];

function replaceLive(fresh) {
  for (const old of document.querySelectorAll("[data-live][id]")) {
    const next = fresh.getElementById(old.id);
    if (next) old.replaceWith(document.importNode(next, true));
  }
}

function sampleBacklog() {
  const cell = document.getElementById("backlog");
  const plot = document.getElementById("plot");
  if (!cell || !plot) return;
  const n = Number.parseInt(cell.dataset.messages, 10);
  if (Number.isNaN(n)) return;
  samples.push(n);
  if (samples.length > PLOT_SAMPLES) samples.shift();
  const top = Math.max(1, ...samples);
  const step = samples.length > 1 ? 600 / (samples.length - 1) : 0;
  const y = (v) => (115 - (v / top) * 110).toFixed(1);
  const points = samples.length === 1
    ? [`0,${y(samples[0])}`, `600,${y(samples[0])}`] // one sample so far: a level line
    : samples.map((v, i) => `${(i * step).toFixed(1)},${y(v)}`);
  plot.querySelector("polyline").setAttribute("points", points.join(" "));
  plot.dataset.samples = String(samples.length);
}

async function refresh() {
  const page = document.body.dataset.page;
  if (!page) return;
  try {
    const answer = await fetch(page, { cache: "no-store", credentials: "same-origin" });
    if (!answer.ok) throw new Error(`status ${answer.status}`);
    const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
    replaceLive(fresh);
    document.getElementById("refreshed").textContent =
      `refreshed ${new Date().toLocaleTimeString()}`;
    document.body.classList.remove("stale");
  } catch (err) {
    document.body.classList.add("stale");
    document.getElementById("refreshed").textContent = `not refreshed: ${err.message}`;
  }
  sampleBacklog();
}

document.addEventListener("DOMContentLoaded", () => {
  sampleBacklog();
  if (document.body.dataset.page) setInterval(refresh, REFRESH_MS);
});

// Live GPU charts: five minutes of utilisation and memory per worker GPU, fed by /ws/telemetry/.
// After a dropped connection the page re-reads the history from the server (the database is the truth).
(function () {
  "use strict";
  const HISTORY = 300;
  const grid = document.getElementById("gpu-cards");
  const charts = {};
  let series = JSON.parse(document.getElementById("samples-data").textContent);

  function card(key) {
    let el = grid.querySelector('[data-series="' + CSS.escape(key) + '"]');
    if (!el) {
      const empty = document.getElementById("no-samples");
      if (empty) empty.remove();
      const s = series[key];
      el = document.createElement("article");
      el.className = "card gpu-card";
      el.dataset.series = key;
      const title = document.createElement("h3");
      title.textContent = s.worker + " · " + (s.gpu === null ? "CPU only" : "GPU " + s.gpu) + " " + (s.name || "");
      // Without a GPU the figure is the worker process's own CPU share, not the machine's.
      const what = s.gpu === null ? "worker process CPU" : "utilisation";
      el.innerHTML = '<p class="gpu-now"><span data-util>–</span> ' + what + ' · <span data-mem>–</span> memory</p><div class="chart" data-chart></div>';
      el.prepend(title);
      grid.appendChild(el);
    }
    return el;
  }

  function draw(key) {
    const s = series[key];
    const el = card(key);
    const data = [s.t, s.util, s.mem];
    if (!charts[key]) {
      const box = el.querySelector("[data-chart]");
      charts[key] = new uPlot({
        width: Math.max(240, box.clientWidth || 320), height: 150,
        scales: { x: { time: true }, y: { range: [0, 100] } },
        series: [{}, { label: s.gpu === null ? "process CPU %" : "util %", stroke: "#2456d6", width: 2 }, { label: "mem %", stroke: "#e4007c", width: 2 }],
        axes: [{}, { size: 40 }],
        legend: { show: true },
      }, data, box);
    } else {
      charts[key].setData(data);
    }
    el.dataset.points = String(s.t.length);
    const n = s.t.length - 1;
    if (n >= 0) {
      el.querySelector("[data-util]").textContent = s.util[n] === null ? "–" : Math.round(s.util[n]) + "%";
      el.querySelector("[data-mem]").textContent = s.mem[n] === null ? "–" : Math.round(s.mem[n]) + "%";
    }
  }

  function add(event) {
    const t = Date.parse(event.taken_at) / 1000;
    event.gpus.forEach(function (g) {
      const key = event.worker + "|" + (g.gpu_index === null ? "cpu" : g.gpu_index);
      const s = series[key] || (series[key] = { worker: event.worker, gpu: g.gpu_index, name: g.name, t: [], util: [], mem: [] });
      s.t.push(t);
      s.util.push(g.utilization_pct);
      s.mem.push(g.memory_total_bytes ? Math.round(10000 * g.memory_used_bytes / g.memory_total_bytes) / 100 : null);
      while (s.t.length && s.t[0] < t - HISTORY) { s.t.shift(); s.util.shift(); s.mem.shift(); }
      draw(key);
    });
  }

  function reload() {
    fetch(grid.dataset.samplesUrl, { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (fresh) { series = fresh; Object.keys(series).forEach(draw); });
  }

  function status(text) {
    const el = document.getElementById("telemetry-status");
    if (el) { el.textContent = text; el.dataset.state = text; }
  }

  let retry = 500, opened = false;
  function connect() {
    const socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/telemetry/");
    socket.onopen = function () { status("live"); retry = 500; if (opened) reload(); opened = true; };
    socket.onmessage = function (message) {
      const event = JSON.parse(message.data);
      if (event.type === "gpu.sample") add(event);
    };
    socket.onclose = function () { status("reconnecting"); setTimeout(connect, retry); retry = Math.min(retry * 2, 10000); };
  }

  document.addEventListener("DOMContentLoaded", function () {
    Object.keys(series).forEach(draw);
    connect();
  });
})();

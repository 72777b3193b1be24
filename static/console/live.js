// Live job updates over the authenticated websocket. Pushes are hints: on a state change
// the element re-reads itself from the server, and after a reconnect every unfinished job
// on the page does the same, so nothing depends on an event that was missed. A push can
// also be lost while the socket stays open (the channel layer is at-most-once): when the
// page has unfinished jobs and nothing arrived for RESYNC_MS, it asks for a snapshot.
(function () {
  "use strict";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled", "rejected"]);
  const RESYNC_MS = 10000;
  let retry = 500;
  let everConnected = false;
  let lastMessage = Date.now();

  function unfinished() {
    return Array.prototype.filter.call(document.querySelectorAll("[data-job-id]"), function (el) {
      return !TERMINAL.has(currentState(el));
    });
  }

  // The server's unfinished jobs: each is handled as an event, and an unfinished one on the
  // page that is not among them has ended since (or is past the snapshot's size): it re-reads itself.
  function resync(snapshot) {
    const listed = new Set(snapshot.jobs.map(function (job) { return String(job.job_id); }));
    snapshot.jobs.forEach(handle);
    unfinished().forEach(function (el) {
      if (!listed.has(el.dataset.jobId)) refresh(el);
    });
  }

  function elementsFor(jobId) {
    return document.querySelectorAll('[data-job-id="' + jobId + '"]');
  }

  // One refresh at a time per element (by id), each from its own element: htmx.ajax without a source
  // queues every request of the page behind the one in flight and keeps only the last, so a job's
  // "succeeded" could be dropped for another job's update. A refresh asked for while its element's is
  // in flight runs again once that one has swapped, on the element that replaced it.
  const refreshing = new Map();

  function refresh(el) {
    if (!el.dataset.liveUrl || !window.htmx || !el.id) return;
    const id = el.id;
    if (refreshing.has(id)) { refreshing.set(id, true); return; }
    refreshing.set(id, false);
    htmx.ajax("GET", el.dataset.liveUrl, { source: el, target: el, swap: "outerHTML" }).finally(function () {
      const again = refreshing.get(id);
      refreshing.delete(id);
      const current = document.getElementById(id);
      if (again && current) refresh(current);
    });
  }

  function setProgress(el, step, steps, percent) {
    const bar = el.querySelector("[data-progress]");
    if (bar) { bar.value = percent; bar.textContent = percent + "%"; }
    const text = el.querySelector("[data-progress-text]");
    if (text) text.textContent = "step " + step + "/" + steps;
    // Per-stage bars and the time left, at the pace of the steps run so far.
    el.querySelectorAll("[data-stage-bar]").forEach(function (stage) {
      const start = Number(stage.dataset.stageStart), size = Number(stage.dataset.stageSteps);
      const done = Math.max(0, Math.min(step - start, size));
      const pct = size ? Math.round(100 * done / size) : 100;
      const p = stage.querySelector("progress");
      p.value = pct; p.textContent = pct + "%";
      stage.querySelector("[data-stage-text]").textContent = done + "/" + size;
    });
    const box = el.querySelector("[data-started]"), eta = el.querySelector("[data-eta]");
    if (box && eta && box.dataset.started && step > 0) {
      const elapsed = Date.now() / 1000 - Number(box.dataset.started);
      eta.textContent = "· about " + Math.max(0, elapsed / step * (steps - step)).toFixed(1) + " s left";
    }
  }

  function currentState(el) {
    const badge = el.querySelector("[data-state]");
    return badge ? badge.textContent.trim() : "";
  }

  function handle(event) {
    if (event.type === "job.progress") {
      elementsFor(event.job_id).forEach(function (el) {
        const badge = el.querySelector("[data-state]");
        if (badge && badge.textContent.trim() !== "running") refresh(el);
        else setProgress(el, event.step, event.steps, event.percent);
      });
    } else if (event.type === "job.state") {
      elementsFor(event.job_id).forEach(function (el) {
        const stageChanged = el.dataset.jobStage !== undefined && el.dataset.jobStage !== event.stage;
        // Paused or resumed at a step boundary: same state and stage, a different note.
        const pauseChanged = el.dataset.jobPaused !== undefined && el.dataset.jobPaused !== (event.paused_for || "");
        if (currentState(el) !== event.state || stageChanged || pauseChanged || TERMINAL.has(event.state)) refresh(el);
        else setProgress(el, event.step, event.steps, event.percent);
      });
    } else if (event.type === "lane.rollout") {
      // A lane's rollout moved: its panel re-reads itself.
      document.querySelectorAll("[data-lane-live]").forEach(function (el) {
        if (el.dataset.laneLive === event.lane) refresh(el);
      });
    } else if (event.type === "jobs.snapshot") {
      resync(event);
    }
  }

  function status(text) {
    const el = document.getElementById("live-status");
    if (el) { el.textContent = text; el.dataset.state = text; }
  }

  function connect() {
    const path = document.body.dataset.liveSocket;
    if (!path || !window.WebSocket) return;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + path);
    socket.onopen = function () {
      status("live");
      retry = 500;
      if (everConnected) {
        document.querySelectorAll("[data-job-id]").forEach(function (el) {
          if (!TERMINAL.has(currentState(el))) refresh(el);
        });
        document.querySelectorAll("[data-lane-live]").forEach(refresh);
      }
      everConnected = true;
    };
    socket.onmessage = function (message) {
      lastMessage = Date.now();
      handle(JSON.parse(message.data));
    };
    const resyncTimer = setInterval(function () {
      if (socket.readyState === WebSocket.OPEN && Date.now() - lastMessage >= RESYNC_MS && unfinished().length) {
        lastMessage = Date.now();
        socket.send(JSON.stringify({ type: "jobs.snapshot" }));
      }
    }, RESYNC_MS / 4);
    socket.onclose = function () {
      clearInterval(resyncTimer);
      status("reconnecting");
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    };
  }

  document.addEventListener("DOMContentLoaded", connect);
})();

// Confirmations and auto-submitting selects, without inline handlers (the Content-Security-Policy
// allows scripts from Laneway's own files only).
document.addEventListener("submit", function (event) {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
}, true);
document.addEventListener("change", function (event) {
  if (event.target.matches("[data-autosubmit]") && event.target.form) event.target.form.submit();
});

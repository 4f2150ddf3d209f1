// Live updates for the overview (polls the JSON feed and puts values in as text, never HTML),
// confirmations and the queue picker. No inline scripts: the pages forbid them.
(function () {
  "use strict";
  var script = document.currentScript;
  var refresh = parseInt(script.getAttribute("data-refresh"), 10) || 2000;
  var root = document.body.getAttribute("data-root") || "";
  var SVG = "http://www.w3.org/2000/svg";

  function cell(text) {
    var td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  function updateQueues(queues) {
    queues.forEach(function (q) {
      var row = null;
      document.querySelectorAll("#queues tbody tr").forEach(function (tr) {
        if (tr.getAttribute("data-queue") === q.name) { row = tr; }
      });
      if (!row) { return; }  // a new queue shows on the next reload
      ["ready", "delayed", "in_progress", "dead"].forEach(function (field) {
        var el = row.querySelector('[data-field="' + field + '"]');
        if (el && el.textContent !== q[field]) { el.textContent = q[field]; }
      });
    });
  }

  function updateWorkers(workers) {
    var body = document.querySelector("#workers tbody");
    var rows = document.createDocumentFragment();
    workers.forEach(function (w) {
      var tr = document.createElement("tr");
      ["name", "host", "pid", "queues", "concurrency", "running", "processed", "failed", "seen_at"].forEach(function (k) {
        tr.appendChild(cell(String(w[k])));
      });
      rows.appendChild(tr);
    });
    if (!workers.length) {
      var tr = document.createElement("tr");
      tr.className = "empty";
      var td = cell("no live workers");
      td.colSpan = 9;
      tr.appendChild(td);
      rows.appendChild(tr);
    }
    body.replaceChildren(rows);
  }

  function line(points, cls) {
    var path = document.createElementNS(SVG, "polyline");
    path.setAttribute("points", points.join(" "));
    path.setAttribute("class", cls);
    return path;
  }

  function drawChart(rates) {
    var svg = document.getElementById("chart");
    if (!svg) { return; }
    var peak = 0;
    rates.forEach(function (r) { peak = Math.max(peak, r[1], r[2]); });
    var first = rates.length ? rates[0][0] : 0;
    var last = rates.length ? rates[rates.length - 1][0] : 1;
    var span = Math.max(last - first, 1);
    var top = peak || 1;
    var done = [], failed = [];
    rates.forEach(function (r) {
      var x = ((r[0] - first) / span * 600).toFixed(1);
      done.push(x + "," + (118 - r[1] / top * 110).toFixed(1));
      failed.push(x + "," + (118 - r[2] / top * 110).toFixed(1));
    });
    svg.replaceChildren(line(done, "done"), line(failed, "failed"));
    document.getElementById("chart-peak").textContent = peak.toFixed(1);
    document.getElementById("chart-span").textContent = Math.round(span / 60 * 10) / 10 + " min";
  }

  function apply(data) {
    updateQueues(data.queues);
    updateWorkers(data.workers);
    drawChart(data.rates);
    document.getElementById("taken-at").textContent = data.taken_at;
  }

  function poll() {
    fetch(root + "/api/overview", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) { apply(data); } })
      .catch(function () {})
      .finally(function () { setTimeout(poll, refresh); });
  }

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  });
  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });

  var initial = document.getElementById("initial");
  if (initial) {
    drawChart(JSON.parse(initial.textContent).rates);
    setTimeout(poll, refresh);
  }
})();

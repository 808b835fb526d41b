// flopex console: the price chart (uPlot) and a job's live view (server-sent events). No build step.
"use strict";
var flopex = (function () {
  var COLOURS = ["#2d6cdf", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#087f8c", "#5f3dc4", "#e67700"];
  var chart = null;

  function fmt(v) { return v == null ? "–" : (+v).toFixed(4).replace(/\.?0+$/, ""); }
  function tok(units) {
    if (units == null) return "–";
    var s = BigInt(units), one = 10n ** 18n, whole = s / one, frac = (s % one).toString().padStart(18, "0").slice(0, 6).replace(/0+$/, "");
    return whole.toString() + (frac ? "." + frac : "");
  }

  function draw(data) {
    var el = document.getElementById("chart");
    if (chart) { chart.destroy(); chart = null; }
    el.textContent = "";
    if (!data.series.length) { el.innerHTML = '<p class="muted" style="padding:1rem">no leases yet: nothing to chart</p>'; return; }
    var series = [{ label: "time (UTC)", value: function (u, t) { return t == null ? "–" : new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19); } }];
    var columns = [data.x];
    data.series.forEach(function (s, i) {
      var colour = COLOURS[i % COLOURS.length];
      series.push({ label: s["class"] + " price", stroke: colour, width: 2, spanGaps: true, paths: uPlot.paths.stepped({ align: 1 }),
                    points: { show: true, size: 6, fill: colour }, value: function (u, v) { return fmt(v); } });
      series.push({ label: s["class"] + " TWAP " + data.window, stroke: colour, dash: [6, 4], width: 1.5, spanGaps: true,
                    points: { show: false }, value: function (u, v) { return fmt(v); } });
      columns.push(s.price, s.twap);
    });
    var opts = {
      width: Math.max(400, el.clientWidth || 900), height: 320, series: series,
      scales: { x: { time: true }, y: { auto: true } },
      axes: [{}, { label: "FLOP per GPU-hour", size: 70 }],
      cursor: { drag: { x: true, y: false } },
      legend: { live: true },
    };
    chart = new uPlot(opts, columns, el);
  }

  function table(data) {
    var body = document.querySelector("#index-table tbody");
    if (!body) return;
    body.innerHTML = "";
    if (!data.stats.length) { body.innerHTML = '<tr><td colspan="9" class="muted">no leases yet</td></tr>'; return; }
    data.stats.forEach(function (s) {
      var tr = document.createElement("tr");
      [s["class"], tok(s.twap), tok(s.vwap), tok(s.last), tok(s.min), tok(s.max), s.leases, s.leased_gpu_hours, s.settled_gpu_hours].forEach(function (v, i) {
        var td = document.createElement("td"); td.textContent = v; if (i) td.className = "num"; tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }

  function reach() {
    fetch("/market/reachability.json").then(function (r) { return r.json(); }).then(function (probes) {
      var pending = false;
      Object.keys(probes).forEach(function (p) {
        var cell = document.querySelector('tr[data-provider="' + p + '"] .reach');
        if (!cell) return;
        cell.className = "reach " + probes[p].reach; cell.textContent = probes[p].reach; cell.title = probes[p].reach_detail;
        if (probes[p].reach === "checking") pending = true;
      });
      if (pending) setTimeout(reach, 1000);
    }).catch(function () {});
  }

  function market(data) {
    draw(data);
    window.addEventListener("resize", function () { if (chart) chart.setSize({ width: document.getElementById("chart").clientWidth, height: 320 }); });
    document.querySelectorAll("a.window").forEach(function (a) {
      a.addEventListener("click", function (ev) {
        ev.preventDefault();
        var w = a.dataset.window;
        fetch("/market/chart.json?window=" + encodeURIComponent(w)).then(function (r) { return r.json(); }).then(function (d) {
          document.querySelectorAll("a.window").forEach(function (b) { b.classList.toggle("picked", b === a); });
          history.replaceState(null, "", "?window=" + encodeURIComponent(w));
          draw(d); table(d);
        });
      });
    });
    if (document.querySelector(".reach.checking")) setTimeout(reach, 500);
  }

  function job(id, terminal) {
    var log = document.getElementById("log"), notice = document.getElementById("log-notice"), progress = document.getElementById("progress");
    if (!window.EventSource) return;
    var source = new EventSource("/job/" + id + "/live");
    source.addEventListener("state", function (ev) {
      var d = JSON.parse(ev.data);
      document.getElementById("live").innerHTML = d.html;
      document.getElementById("job-status").textContent = d.status;
      var block = document.getElementById("source-block"); if (block) block.textContent = d.block;
    });
    source.addEventListener("log", function (ev) {
      var d = JSON.parse(ev.data);
      log.textContent += (d.slot ? "[slot " + d.slot + "] " : "") + (d.stream === "stderr" ? "! " : "") + d.text + "\n";
      log.scrollTop = log.scrollHeight;
    });
    source.addEventListener("progress", function (ev) {
      var d = JSON.parse(ev.data);
      progress.textContent = (d.fraction != null ? Math.round(d.fraction * 100) + "% " : "") + d.text;
    });
    source.addEventListener("notice", function (ev) { notice.textContent = JSON.parse(ev.data).text; });
    source.addEventListener("end", function () { source.close(); document.body.dataset.live = "ended"; });
    source.onerror = function () { if (document.body.dataset.live === "ended") source.close(); };
    document.body.dataset.live = "open";
  }

  return { market: market, job: job };
})();

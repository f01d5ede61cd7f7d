// GhostReview offline report: sorting and the full-size viewer. Touches text only through textContent.
(function () {
  "use strict";
  function num(v) { var x = parseFloat(v); return isNaN(x) ? null : x; }

  // Order rows by a numeric attribute, best (largest) first, missing values last; ties keep name order.
  function sortRows(container, rows, attr) {
    rows.sort(function (a, b) {
      var x = num(a.getAttribute(attr)), y = num(b.getAttribute(attr));
      if (x === null && y === null) { return a.dataset.model < b.dataset.model ? -1 : 1; }
      if (x === null) { return 1; }
      if (y === null) { return -1; }
      if (x !== y) { return y - x; }
      return a.dataset.model < b.dataset.model ? -1 : 1;
    });
    rows.forEach(function (r) { container.appendChild(r); });
  }

  function sortByName(container, rows) {
    rows.sort(function (a, b) { return a.dataset.model < b.dataset.model ? -1 : 1; });
    rows.forEach(function (r) { container.appendChild(r); });
  }

  // key: "score" (the grid's primary metric), "name", "default" (leaderboard order) or a metric name.
  function sortGrid(grid, key) {
    var body = grid.querySelector(".grid-body");
    var rows = Array.prototype.slice.call(body.querySelectorAll(":scope > .grid-row"));
    if (key === "name") { sortByName(body, rows); }
    else if (key === "default") { sortRows(body, rows, "data-default"); }
    else if (key === "score") { sortRows(body, rows, "data-score"); }
    else if (rows.length && rows[0].hasAttribute("data-m-" + key)) { sortRows(body, rows, "data-m-" + key); }
    else { return false; }
    var shown = key === "score" ? grid.dataset.primary : key;
    grid.querySelectorAll(".sorter button").forEach(function (b) {
      b.classList.toggle("active", b.dataset.sort === shown);
    });
    grid.dataset.sorted = key;
    return true;
  }

  function sortAll(key) {
    document.querySelectorAll("section.grid").forEach(function (g) { sortGrid(g, key); });
    document.body.dataset.sorted = key;
  }

  function sortLeaderboard(th) {
    var table = document.getElementById("leaderboard");
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var desc = !th.classList.contains("sorted-desc");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = num(x), ny = num(y);
      var c = (nx !== null && ny !== null) ? nx - ny : String(x).localeCompare(String(y));
      return desc ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-desc", "sorted-asc"); });
    th.classList.add(desc ? "sorted-desc" : "sorted-asc");
  }

  function openViewer(fig) {
    var box = document.getElementById("lightbox");
    var img = box.querySelector("img");
    var full = fig.dataset.full;
    if (full) { img.src = full; img.hidden = false; } else { img.removeAttribute("src"); img.hidden = true; }
    box.querySelector(".caption").textContent = fig.dataset.caption || "";
    var info = fig.querySelector("pre.infotext");
    box.querySelector("pre").textContent = info ? info.textContent : "";
    box.dataset.hash = fig.dataset.hash || "";
    box.classList.add("open");
  }

  function hashParams() {
    var out = {};
    window.location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i > 0) { out[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1)); }
    });
    return out;
  }

  function applyHash() {
    var p = hashParams();
    if (p.sort) { sortAll(p.sort); }
    if (p.open) {
      var figs = document.querySelectorAll("figure.thumb");
      for (var i = 0; i < figs.length; i++) {
        if (figs[i].dataset.hash === p.open) { figs[i].querySelector(".shot").click(); break; }
      }
    }
  }

  document.querySelectorAll("section.grid .sorter button").forEach(function (b) {
    b.addEventListener("click", function () { sortGrid(b.closest("section.grid"), b.dataset.sort); });
  });
  document.querySelectorAll("#leaderboard th").forEach(function (th) {
    th.addEventListener("click", function () { sortLeaderboard(th); });
  });
  document.querySelectorAll("figure.thumb .shot").forEach(function (s) {
    s.addEventListener("click", function (e) { e.preventDefault(); openViewer(s.closest("figure.thumb")); });
  });
  document.getElementById("lightbox").addEventListener("click", function () {
    this.classList.remove("open");
  });
  window.addEventListener("hashchange", applyHash);
  applyHash();
  document.body.dataset.ready = "1";
})();

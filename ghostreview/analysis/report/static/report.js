// GhostReview offline report: sorting (leaderboard rows, grid columns) and the full-size viewer. Touches text only
// through textContent.
(function () {
  "use strict";
  function num(v) { var x = parseFloat(v); return isNaN(x) ? null : x; }

  // Order a grid's column headers by a numeric attribute, best (largest) first, missing values last; ties keep
  // name order.
  function byAttr(attr) {
    return function (a, b) {
      var x = num(a.getAttribute(attr)), y = num(b.getAttribute(attr));
      if (x === null && y === null) { return a.dataset.model < b.dataset.model ? -1 : 1; }
      if (x === null) { return 1; }
      if (y === null) { return -1; }
      if (x !== y) { return y - x; }
      return a.dataset.model < b.dataset.model ? -1 : 1;
    };
  }

  function byName(a, b) { return a.dataset.model < b.dataset.model ? -1 : 1; }

  // Put the model columns of a grid (header cells and every seed row's cells) in the order of ``heads``.
  function reorderColumns(table, heads) {
    var headRow = table.tHead.rows[0];
    heads.forEach(function (h) { headRow.appendChild(h); });
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      var cells = {};
      row.querySelectorAll(":scope > td.cell").forEach(function (c) { cells[c.dataset.model] = c; });
      heads.forEach(function (h) { if (cells[h.dataset.model]) { row.appendChild(cells[h.dataset.model]); } });
    });
  }

  // key: "score" (the grid's primary metric), "name", "default" (leaderboard order) or a metric name.
  function sortGrid(grid, key) {
    var table = grid.querySelector("table.xy");
    var heads = Array.prototype.slice.call(table.tHead.querySelectorAll("th.col"));
    if (key === "name") { heads.sort(byName); }
    else if (key === "default") { heads.sort(byAttr("data-default")); }
    else if (key === "score") { heads.sort(byAttr("data-score")); }
    else if (heads.length && heads[0].hasAttribute("data-m-" + key)) { heads.sort(byAttr("data-m-" + key)); }
    else { return false; }
    reorderColumns(table, heads);
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

  // A grid image's caption and infotext are rebuilt from its cell, row and column (see html.py's Infotexts); a
  // target image carries its own.
  function infoOf(fig, grid, model, seed) {
    if (fig.hasAttribute("data-info")) { return fig.dataset.info; }
    var head = fig.closest("tr").dataset.ih || "";
    var th = Array.prototype.find.call(grid.querySelectorAll("th.col"), function (t) {
      return t.dataset.model === model;
    });
    var tail = th ? (th.dataset.it || "").replace("{seed}", seed) : "";
    return head ? head + "\n" + tail : tail;
  }

  function openViewer(fig) {
    var box = document.getElementById("lightbox");
    var img = box.querySelector("img");
    var link = fig.querySelector("a.shot");
    var full = link ? link.getAttribute("href") : "";
    if (full) { img.src = full; img.hidden = false; } else { img.removeAttribute("src"); img.hidden = true; }
    var cell = fig.closest("td.cell"), grid = fig.closest("section.grid");
    var caption = fig.dataset.caption || "", info = fig.dataset.info || "";
    if (cell && grid) {
      var seed = fig.closest("tr").dataset.seed;
      caption = cell.dataset.model + " · " + grid.dataset.task + " " + grid.dataset.item + " · seed " + seed;
      info = infoOf(fig, grid, cell.dataset.model, seed);
    }
    box.querySelector(".caption").textContent = caption;
    box.querySelector("pre").textContent = info;
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
    if (p.at && document.getElementById(p.at)) { document.getElementById(p.at).scrollIntoView(); }
    if (p.open) {
      var figs = document.querySelectorAll("figure.thumb");
      for (var i = 0; i < figs.length; i++) {
        if (figs[i].dataset.hash === p.open) { openViewer(figs[i]); break; }
      }
    }
  }

  document.querySelectorAll("section.grid .sorter button").forEach(function (b) {
    b.addEventListener("click", function () { sortGrid(b.closest("section.grid"), b.dataset.sort); });
  });
  document.querySelectorAll("#leaderboard th").forEach(function (th) {
    th.addEventListener("click", function () { sortLeaderboard(th); });
  });
  // A link to another part of a split item keeps the order its grid is sorted in: "page#<anchor>" is followed as
  // "page#sort=<key>&at=<anchor>" (the anchor is already percent-quoted; the plain link works without the script).
  document.querySelectorAll("section.grid .parts a").forEach(function (a) {
    var plain = a.getAttribute("href"), i = plain.indexOf("#");
    a.addEventListener("click", function () {
      var key = a.closest("section.grid").dataset.sorted;
      a.setAttribute("href", key && i >= 0 ? plain.slice(0, i) + "#sort=" + encodeURIComponent(key) + "&at=" +
                     plain.slice(i + 1) : plain);
    });
  });
  // One listener for all thumbnails (a full review has tens of thousands); a modified click follows the plain link.
  document.addEventListener("click", function (e) {
    var shot = e.target.closest ? e.target.closest("figure.thumb .shot") : null;
    if (!shot || e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) { return; }
    e.preventDefault();
    openViewer(shot.closest("figure.thumb"));
  });
  document.getElementById("lightbox").addEventListener("click", function () {
    this.classList.remove("open");
  });
  window.addEventListener("hashchange", applyHash);
  applyHash();
  document.body.dataset.ready = "1";
})();

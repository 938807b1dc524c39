# ruff: noqa: E501 - an HTML page in a string: its lines are as long as the page needs
"""The viewer of ``index.html``: CSS and vanilla JS, the atlas's data inlined by ``page.render``
(``__DATA__``: atlas.json without the per-layer matrices; ``__IMAGES__``: {"class/crop": data URI})."""

TEMPLATE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>__TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; } h3 { font-size: 1em; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: grid; gap: 1px; background: #eee; width: max-content; }
.grid div { width: 18px; height: 18px; }
.lab { font-size: 11px; white-space: nowrap; overflow: hidden; }
.wrap { display: flex; gap: 6px; align-items: flex-start; }
.rows { display: grid; gap: 1px; }
.rows div { height: 18px; font-size: 11px; white-space: nowrap; text-align: right; }
canvas { image-rendering: pixelated; cursor: crosshair; }
.shared { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #ccc; border-radius: 4px; padding: 6px; max-width: 420px; }
.card img { width: 48px; height: 48px; image-rendering: pixelated; margin: 1px; }
.muted { color: #777; } .err { color: #a00; }
#tip { position: fixed; pointer-events: none; background: #333; color: #fff; padding: 2px 6px; font-size: 12px; border-radius: 3px; display: none; }
</style>
</head>
<body>
<h1 id="title"></h1>
<p id="facts" class="muted"></p>
<h2>Classes</h2>
<table id="classes"><thead></thead><tbody></tbody></table>
<div id="failed"></div>
<h2>Class similarity by circuit overlap</h2>
<p class="muted">Weighted Jaccard of the classes' core weights, averaged over the layers (docs/atlas.md);
classes ordered by an average-linkage clustering of 1 - similarity; darker is more similar (hover a cell for its values).
<span id="corr"></span></p>
<div class="wrap"><div id="hm-rows" class="rows"></div><canvas id="heatmap"></canvas></div>
<h2>Core neurons per layer</h2>
<div id="layers"></div>
<div id="tip"></div>
<script type="application/json" id="atlas-data">__DATA__</script>
<script type="application/json" id="atlas-images">__IMAGES__</script>
<script>
"use strict";
const A = JSON.parse(document.getElementById("atlas-data").textContent);
const IMG = JSON.parse(document.getElementById("atlas-images").textContent);
const $ = (tag, attrs = {}, text) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
};
const tip = document.getElementById("tip");
const plural = (n, noun, many) => `${n} ${n === 1 ? noun : many || noun + "s"}`;  // "1 class", "2 classes"
const cname = c => (c.name === null || c.name === undefined) ? String(c.target) : c.name;
const colour = (v, hue = 210) => `hsl(${hue}, 70%, ${Math.round(97 - 62 * Math.max(0, Math.min(1, v)))}%)`;
document.getElementById("title").textContent = `Class atlas: ${A.model} on ${A.data}`;
document.getElementById("facts").textContent =
  `${plural(A.classes.length, "class", "classes")}; layers ${A.layers.join(", ")}` + (A.failed.length ? `; ${A.failed.length} failed` : "");
// classes
const lower = A.layers.slice(1, -1);
const head = document.querySelector("#classes thead"), body = document.querySelector("#classes tbody");
const hr = $("tr"); ["class", "index", "class images", ...A.layers.slice(0, -1).map(l => "nodes " + l), "report"].forEach(t => hr.append($("th", {}, t)));
head.append(hr);
A.classes.forEach((c, i) => {
  const tr = $("tr", {"data-class": String(i)});
  tr.append($("td", {}, cname(c)), $("td", {class: "n"}, String(c.target)), $("td", {class: "n"}, String(c.n_class_images)));
  A.layers.slice(0, -1).forEach(l => tr.append($("td", {class: "n"}, String(c.nodes[l] ?? ""))));
  const td = $("td"); td.append($("a", {href: c.report, class: "report-link"}, "report")); tr.append(td);
  body.append(tr);
});
if (A.failed.length) {
  const box = document.getElementById("failed");
  box.append($("h3", {}, "Failed classes"));
  A.failed.forEach(f => box.append($("div", {class: "err"}, `${f.name ?? f.target}: ${f.error}`)));
}
// heatmap
const cc = A.confusion_correlation || {};
document.getElementById("corr").textContent = cc.spearman === null || cc.spearman === undefined
  ? "No confusion correlation (no labels, or too few classes)."
  : `Agreement with the model's symmetrised confusion rate: Spearman ${cc.spearman.toFixed(3)} over ${cc.pairs} class pairs, Mantel permutation p = ${cc.p_value.toPrecision(3)} (${cc.permutations} permutations).`;
const n = A.classes.length, order = A.order;
// a canvas, one rectangle per cell (1,000 classes are a million cells: no DOM element each); the
// cell under the pointer is found from its position (data-cell on the canvas: the one hovered last)
const paint = (canvas, nrows, ncols, cw, ch, fill, text) => {
  canvas.width = ncols * cw; canvas.height = nrows * ch;
  canvas.dataset.rows = nrows; canvas.dataset.cols = ncols; canvas.dataset.cellWidth = cw; canvas.dataset.cellHeight = ch;
  const g = canvas.getContext("2d");
  for (let r = 0; r < nrows; r++) for (let c = 0; c < ncols; c++) {
    g.fillStyle = fill(r, c); g.fillRect(c * cw, r * ch, cw - (cw > 3 ? 1 : 0), ch - (ch > 3 ? 1 : 0));
  }
  canvas.addEventListener("mousemove", ev => {
    const b = canvas.getBoundingClientRect();
    const c = Math.floor((ev.clientX - b.left) / cw), r = Math.floor((ev.clientY - b.top) / ch);
    if (r < 0 || c < 0 || r >= nrows || c >= ncols) return;
    canvas.dataset.cell = `${r},${c}`;
    tip.textContent = text(r, c); tip.style.display = "block";
    tip.style.left = (ev.clientX + 12) + "px"; tip.style.top = (ev.clientY + 12) + "px";
  });
  canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; });
};
const side = Math.max(1, Math.min(18, Math.floor(900 / Math.max(1, n))));  // the matrix fits about 900 px
const hm = document.getElementById("heatmap"), rows = document.getElementById("hm-rows");
if (side >= 10) order.forEach(i => { const d = $("div", {}, cname(A.classes[i])); d.style.height = (side - 1) + "px"; d.style.marginBottom = "1px"; rows.append(d); });
paint(hm, n, n, side, side, (r, c) => colour(A.similarity[order[r]][order[c]]), (r, c) => {
  const i = order[r], j = order[c];
  const conf = A.confusion ? `; confusion ${A.confusion.symmetrised_rate[i][j].toFixed(4)}` : "";
  return `${cname(A.classes[i])} / ${cname(A.classes[j])}: similarity ${A.similarity[i][j].toFixed(3)}${conf}`;
});
// per layer: incidence and shared neurons
const box = document.getElementById("layers");
Object.entries(A.incidence).forEach(([layer, inc]) => {
  box.append($("h3", {}, `${layer}: ${plural(inc.neurons.length, "neuron")} core for at least one class`));
  box.append($("p", {class: "muted"}, "Class x neuron incidence: darker is a larger core weight (hover a cell)."));
  const wrap = $("div", {class: "wrap"});
  const r = $("div", {class: "rows"});
  const g = $("canvas", {class: "inc", "data-layer": layer});
  let top = 1e-9;
  inc.weights.forEach(row => row.forEach(w => { if (w > top) top = w; }));
  const ch = Math.max(1, Math.min(10, Math.floor(900 / Math.max(1, n)))), cw = Math.max(1, Math.min(8, Math.floor(1200 / Math.max(1, inc.neurons.length))));
  if (ch >= 8) order.forEach(i => { const d = $("div", {}, cname(A.classes[i])); d.style.height = (ch - 1) + "px"; d.style.marginBottom = "1px"; d.style.fontSize = "9px"; r.append(d); });
  paint(g, n, inc.neurons.length, cw, ch, (row, k) => {
    const w = inc.weights[order[row]][k];
    return w > 0 ? colour(0.25 + 0.75 * w / top, 20) : "#fff";
  }, (row, k) => `${cname(A.classes[order[row]])}, neuron ${inc.neurons[k]}: weight ${inc.weights[order[row]][k].toFixed(4)}`);
  wrap.append(r, g); box.append(wrap);
  const shared = $("div", {class: "shared", "data-shared": layer});
  // only neurons core for two classes or more are shared: the heading never claims sharing that is not there
  const many = (A.shared[layer] || []).filter(s => s.classes.length >= 2);
  many.forEach(s => {
    const card = $("div", {class: "card", "data-neuron": `${layer}/${s.neuron}`});
    card.append($("b", {}, `neuron ${s.neuron}`), $("span", {class: "muted"}, ` core for ${s.classes.length} of ${plural(n, "class", "classes")}`));
    s.classes.forEach(i => {
      const line = $("div");
      line.append($("span", {}, cname(A.classes[i]) + " "));
      (s.exemplars[String(i)] || []).forEach(key => { if (IMG[key]) line.append($("img", {src: IMG[key], alt: key})); });
      card.append(line);
    });
    shared.append(card);
  });
  if (many.length)
    box.append($("p", {class: "muted", "data-shared-heading": layer}, "Neurons shared by the most classes (their display exemplars in each class; none at the input layer):"), shared);
  else
    box.append($("p", {class: "muted", "data-shared-heading": layer, "data-none-shared": "1"},
      n < 2 ? "Only one class: no neuron can be shared between classes." : "No neuron is a core neuron of more than one class at this layer."));
});
window.__atlasReady = true;
</script>
</body>
</html>
"""

// edgec viz: draws the laid-out views embedded as JSON by tools/viz/render.py.
// Every model string is written with textContent (or as an SVG <title>'s text); nothing here
// builds markup from strings.
(function () {
  "use strict";
  const SVGNS = "http://www.w3.org/2000/svg";
  const DATA = JSON.parse(document.getElementById("edgec-viz-data").textContent);
  const CHAR_W = 6.7;

  // -- small DOM helpers ----------------------------------------------------------------
  function h(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function s(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k of Object.keys(attrs || {})) e.setAttribute(k, String(attrs[k]));
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fit(text, width) {
    const n = Math.max(1, Math.floor(width / CHAR_W));
    text = String(text);
    return text.length <= n ? text : text.slice(0, n - 1) + "\u2026";
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }

  // -- colours ----------------------------------------------------------------------------
  const NONE = "#e5e7eb";
  const FIXED = {
    placement: { htp: "#c4b5fd", npu: "#c4b5fd", dsp: "#c4b5fd", cpu: "#93c5fd",
                 gpu: "#6ee7b7", none: NONE },
    precision: { f32: "#e5e7eb", f64: "#d1d5db", f16: "#bfdbfe", bf16: "#a5b4fc",
                 int32: "#fef3c7", uint32: "#fef3c7", int16: "#fde68a", uint16: "#fde68a",
                 int8: "#fdba74", uint8: "#fdba74", int4: "#fca5a5", uint4: "#fca5a5" },
    diff: { added: "#86efac", removed: "#fca5a5", changed: "#fcd34d", same: "#f3f4f6" },
  };
  const PALETTE = ["#a7f3d0", "#fbcfe8", "#ddd6fe", "#bae6fd", "#fecaca", "#d9f99d",
                   "#fed7aa", "#e9d5ff", "#99f6e4", "#f5d0fe"];
  const HEAT = [[255, 247, 236], [253, 187, 132], [239, 101, 72], [179, 0, 0]];
  const extra = {};
  function catColour(mode, cat) {
    const table = FIXED[mode];
    if (table && Object.prototype.hasOwnProperty.call(table, cat)) return table[cat];
    const key = mode + "\u0000" + cat;
    if (!(key in extra)) extra[key] = PALETTE[Object.keys(extra).length % PALETTE.length];
    return extra[key];
  }
  function heat(t) {
    t = Math.max(0, Math.min(1, t));
    const x = t * (HEAT.length - 1), i = Math.min(HEAT.length - 2, Math.floor(x)), f = x - i;
    const c = HEAT[i].map((v, k) => Math.round(v + (HEAT[i + 1][k] - v) * f));
    return "rgb(" + c.join(",") + ")";
  }
  const HEAT_MODES = ["cost", "drift"];
  function short(v) { return String(Number(v.toPrecision(4))); }
  function unitOf(mode) {
    const u = DATA.units || {};
    return Object.prototype.hasOwnProperty.call(u, mode) ? " " + String(u[mode]) : "";
  }
  const range = {};
  for (const m of HEAT_MODES) {
    let lo = Infinity, hi = -Infinity;
    for (const g of DATA.graphs) for (const n of g.nodes) {
      if (typeof n[m] === "number") { lo = Math.min(lo, n[m]); hi = Math.max(hi, n[m]); }
    }
    range[m] = [lo, hi];
  }
  function heatT(mode, v) {
    const [lo, hi] = range[mode];
    return hi > lo ? (v - lo) / (hi - lo) : 1;
  }
  function category(node, mode) {
    if (mode === "placement") return node.pl === null || node.pl === undefined ? "none" : node.pl;
    if (mode === "precision") return node.prec;
    if (mode === "diff") return node.diff || "same";
    return "";
  }
  function nodeFill(node, mode) {
    if (HEAT_MODES.includes(mode)) {
      return typeof node[mode] === "number" ? heat(heatT(mode, node[mode])) : "#ffffff";
    }
    return catColour(mode, category(node, mode));
  }

  // -- per-graph indexes --------------------------------------------------------------------
  for (const g of DATA.graphs) {
    g.members = g.groups.map(() => []);  // node indices in each group's subtree
    g.nodes.forEach((n, i) => { for (const a of g.groups[n.g].anc) g.members[a].push(i); });
    g.byPath = new Map(g.groups.map((gr, j) => [gr.path, j]));
  }
  function groupSummary(g, j, mode) {
    const idx = g.members[j];
    if (HEAT_MODES.includes(mode)) {
      let best = null;
      for (const i of idx) {
        const v = g.nodes[i][mode];
        if (typeof v === "number" && (best === null || v > best)) best = v;
      }
      return { max: best };
    }
    const counts = new Map();
    for (const i of idx) {
      const c = category(g.nodes[i], mode);
      counts.set(c, (counts.get(c) || 0) + 1);
    }
    return { counts: counts };
  }

  // -- state ------------------------------------------------------------------------------
  const modes = ["placement", "precision"].concat(DATA.overlays);
  if (DATA.diff) modes.unshift("diff");
  const state = { mode: modes[0], hits: DATA.graphs.map(() => new Set()), labels: true,
                  selected: null };
  const panes = [];

  // -- header -----------------------------------------------------------------------------
  const bar = document.getElementById("bar");
  bar.appendChild(h("span", "title", DATA.title));
  const search = h("input");
  search.type = "search";
  search.id = "search";
  search.placeholder = "Search name or op";
  bar.appendChild(search);
  const count = h("span", "count");
  count.id = "search-count";
  bar.appendChild(count);
  const modeSel = h("select");
  modeSel.id = "mode";
  for (const m of modes) {
    const o = h("option", null, m);
    o.value = m;
    modeSel.appendChild(o);
  }
  const modeLabel = h("label", null, "Colour ");
  modeLabel.appendChild(modeSel);
  bar.appendChild(modeLabel);
  const labelsBox = h("input");
  labelsBox.type = "checkbox";
  labelsBox.checked = true;
  labelsBox.id = "edge-labels";
  const labelsLabel = h("label");
  labelsLabel.appendChild(labelsBox);
  labelsLabel.appendChild(document.createTextNode(" edge labels"));
  bar.appendChild(labelsLabel);
  const fitBtn = h("button", null, "Fit");
  fitBtn.id = "fit";
  bar.appendChild(fitBtn);
  if (DATA.diff) {
    const d = h("span", "diffsum");
    d.appendChild(h("span", null, "+" + DATA.diff.added + " added"));
    d.appendChild(h("span", null, "\u2212" + DATA.diff.removed + " removed"));
    d.appendChild(h("span", null, "~" + DATA.diff.changed + " changed"));
    bar.appendChild(d);
  }

  function drawLegend() {
    const lg = document.getElementById("legend");
    clear(lg);
    const mode = state.mode;
    if (HEAT_MODES.includes(mode)) {
      const [lo, hi] = range[mode];
      if (!(hi >= lo)) { lg.appendChild(h("span", null, "no " + mode + " values")); return; }
      lg.appendChild(h("span", null, mode + ": " + lo.toPrecision(3)));
      const grad = s("svg", { width: 120, height: 12, class: "grad" });
      for (let i = 0; i < 24; i++) {
        grad.appendChild(s("rect", { x: i * 5, y: 0, width: 5, height: 12, fill: heat(i / 23) }));
      }
      lg.appendChild(grad);
      lg.appendChild(h("span", null, hi.toPrecision(3) + unitOf(mode)));
      lg.appendChild(h("span", null, "(white: no value)"));
      return;
    }
    const cats = new Map();
    for (const g of DATA.graphs) for (const n of g.nodes) {
      const c = category(n, mode);
      cats.set(c, (cats.get(c) || 0) + 1);
    }
    const order = mode === "diff" ? ["added", "removed", "changed", "same"] : [...cats.keys()].sort();
    for (const c of order) {
      const item = h("span", "item");
      const sw = h("span", "sw");
      item.appendChild(sw);
      sw.style.background = catColour(mode, c);
      item.appendChild(document.createTextNode(c + " (" + (cats.get(c) || 0) + ")"));
      lg.appendChild(item);
    }
  }

  // -- details panel ------------------------------------------------------------------------
  const details = document.getElementById("details");
  function table(rows) {
    const t = h("table");
    for (const [k, v] of rows) {
      if (v === null || v === undefined || v === "") continue;
      const tr = h("tr");
      tr.appendChild(h("td", "k", k));
      tr.appendChild(h("td", null, v));
      t.appendChild(tr);
    }
    return t;
  }
  function section(title, child) {
    details.appendChild(h("h3", null, title));
    details.appendChild(child);
  }
  function list(items) {
    const ul = h("ul");
    for (const it of items) ul.appendChild(h("li", null, it));
    return ul;
  }
  function showNode(gi, i) {
    const g = DATA.graphs[gi], n = g.nodes[i];
    clear(details);
    details.appendChild(h("h2", null, n.op + "  " + n.key));
    section("node", table([
      ["graph", DATA.graphs.length > 1 ? g.role : null], ["op", n.op], ["name", n.name],
      ["module", n.src], ["rule", n.rule], ["pass", n.pass],
      ["placement", n.pl === null ? "(none)" : n.pl], ["placement reason", n.reason],
      ["precision", n.prec],
      ["cost", typeof n.cost === "number" ? short(n.cost) + unitOf("cost") : null],
      ["drift", typeof n.drift === "number" ? short(n.drift) + unitOf("drift") : null],
      ["diff", n.diff]]));
    if (n.changes && n.changes.length) section("changes", list(n.changes));
    if (n.attrs.length) section("attributes", table(n.attrs));
    section("inputs", list(n.ins.map(([name, type, enc, isConst]) =>
      (isConst ? "const " : "") + "%" + name + ": " + type + (enc ? "  " + enc : ""))));
    section("outputs", list(n.outs.map(([name, type, enc]) =>
      "%" + name + ": " + type + (enc ? "  " + enc : ""))));
    if (n.meta.length) section("metadata", table(n.meta));
  }
  function showGroup(gi, j) {
    const g = DATA.graphs[gi], gr = g.groups[j];
    clear(details);
    details.appendChild(h("h2", null, gr.path || g.name));
    const ops = new Map();
    for (const i of g.members[j]) ops.set(g.nodes[i].op, (ops.get(g.nodes[i].op) || 0) + 1);
    section("module", table([["path", gr.path || "(graph)"], ["nodes", String(gr.n)],
                             ["submodules", String(gr.kids.length)]]));
    const top = [...ops.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12);
    section("ops", table(top.map(([op, c]) => [op, String(c)])));
    if (j === 0 && g.meta.length) section("graph metadata", table(g.meta));
  }
  function showPort(info) {
    clear(details);
    details.appendChild(h("h2", null, "%" + info.value));
    section("tensor", table([["type", info.type],
      [info.dir === "in" ? "from" : "to", info.peer],
      ["crosses", info.dir === "in" ? "into this module" : "out of this module"]]));
  }
  function showHelp() {
    clear(details);
    details.appendChild(h("h2", null, "Details"));
    details.appendChild(h("p", "hint", "Click a node for its details, a module box to open " +
      "it, a breadcrumb to go back up. Drag to pan, wheel to zoom."));
    const g = DATA.graphs[DATA.graphs.length - 1];
    if (g.meta.length) section("graph metadata", table(g.meta));
  }
  function showResults(hits) {
    clear(details);
    let total = 0;
    hits.forEach((set) => { total += set.size; });
    details.appendChild(h("h2", null, total + " match" + (total === 1 ? "" : "es")));
    hits.forEach((set, gi) => {
      if (!set.size) return;
      const ul = h("ul");
      let shown = 0;
      for (const i of set) {
        if (shown++ >= 200) { ul.appendChild(h("li", null, "\u2026")); break; }
        const n = DATA.graphs[gi].nodes[i];
        const li = h("li");
        const b = h("button", "link", n.op + " " + n.key + (n.src ? "  (" + n.src + ")" : ""));
        b.addEventListener("click", () => reveal(gi, i));
        li.appendChild(b);
        ul.appendChild(li);
      }
      section(DATA.graphs.length > 1 ? DATA.graphs[gi].role : "nodes", ul);
    });
  }

  // -- panes ------------------------------------------------------------------------------
  function makePane(gi) {
    const g = DATA.graphs[gi];
    const el = h("section", "pane");
    el.id = "pane-" + g.role;
    const crumbs = h("div", "crumbs");
    const svg = s("svg", { class: "view" });
    el.appendChild(crumbs);
    el.appendChild(svg);
    document.getElementById("panes").appendChild(el);
    const pane = { gi: gi, g: g, el: el, crumbs: crumbs, svg: svg, view: null,
                   t: { x: 0, y: 0, k: 1 }, layer: null, items: new Map() };
    panes.push(pane);
    const defs = s("defs");
    const marker = s("marker", { id: "arrow-" + gi, viewBox: "0 0 10 10", refX: 9, refY: 5,
                                 markerWidth: 7, markerHeight: 7, orient: "auto" });
    marker.appendChild(s("path", { d: "M0,0L10,5L0,10z", fill: "#6b7280" }));
    defs.appendChild(marker);
    svg.appendChild(defs);
    pane.layer = s("g", { class: "viewport" });
    svg.appendChild(pane.layer);
    panZoom(pane);
    return pane;
  }

  function applyTransform(p) {
    p.layer.setAttribute("transform", "translate(" + p.t.x + "," + p.t.y + ") scale(" + p.t.k + ")");
    p.svg.classList.toggle("nolabels", !state.labels || p.t.k < 0.45);
  }
  // Fit the view into the pane. Unless `whole`, a view too tall to read when fitted is
  // shown at a readable zoom from its top (fitted to the width when that is enough).
  function fitView(p, whole) {
    const v = p.g.views[p.view];
    const W = p.svg.clientWidth || 800, H = p.svg.clientHeight || 600;
    let k = Math.min(1.5, W / (v.w + 40), H / (v.h + 40));
    if (!whole && k < 0.6) k = Math.min(1, Math.max(0.6, W / (v.w + 40)));
    p.t = { k: k, x: (W - v.w * k) / 2, y: Math.max(10, (H - v.h * k) / 2) };
    applyTransform(p);
  }
  function panZoom(p) {
    let drag = null;
    p.svg.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const r = p.svg.getBoundingClientRect();
      const mx = ev.clientX - r.left, my = ev.clientY - r.top;
      const f = Math.exp(-ev.deltaY * 0.0015);
      const k = Math.max(0.02, Math.min(8, p.t.k * f));
      p.t.x = mx - (mx - p.t.x) * (k / p.t.k);
      p.t.y = my - (my - p.t.y) * (k / p.t.k);
      p.t.k = k;
      applyTransform(p);
    }, { passive: false });
    p.svg.addEventListener("mousedown", (ev) => {
      drag = { x: ev.clientX, y: ev.clientY, tx: p.t.x, ty: p.t.y, moved: false };
    });
    window.addEventListener("mousemove", (ev) => {
      if (!drag) return;
      const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; p.svg.classList.add("dragging"); }
      p.t.x = drag.tx + dx;
      p.t.y = drag.ty + dy;
      applyTransform(p);
    });
    window.addEventListener("mouseup", () => {
      if (drag && drag.moved) p.suppressClick = true;
      drag = null;
      p.svg.classList.remove("dragging");
    });
    p.svg.addEventListener("click", (ev) => {
      if (p.suppressClick) { p.suppressClick = false; ev.stopPropagation(); return; }
      const item = ev.target.closest ? ev.target.closest("[data-item]") : null;
      if (!item) return;
      const ref = p.items.get(item);
      if (!ref) return;
      if (ref.kind === "n") select(p.gi, ref.i);
      else if (ref.kind === "g") openView(p, "g" + ref.i, true);  // a box or a frame label
      else if (ref.kind === "p") showPort(ref.info);
    }, true);
  }

  function crumbButton(p, label, view) {
    const b = h("button", null, label);
    b.addEventListener("click", () => openView(p, view, true));
    return b;
  }
  function drawCrumbs(p) {
    clear(p.crumbs);
    if (DATA.graphs.length > 1) p.crumbs.appendChild(h("span", "role", p.g.role));
    if (p.view !== "all" && p.view !== "g0") {
      const up = h("button", "up", "\u25b2 up");
      up.title = "collapse this module";
      const parent = p.g.groups[Number(p.view.slice(1))].parent;
      up.addEventListener("click", () => openView(p, "g" + parent, true));
      p.crumbs.appendChild(up);
    }
    if (p.g.views.all) {
      p.crumbs.appendChild(crumbButton(p, "all nodes", "all"));
      p.crumbs.appendChild(h("span", "sep", " | "));
    }
    if (p.view === "all") {
      p.crumbs.appendChild(crumbButton(p, "modules", "g0"));
      return;
    }
    const chain = p.g.groups[Number(p.view.slice(1))].anc;
    chain.forEach((j, k) => {
      if (k) p.crumbs.appendChild(h("span", "sep", " \u203a "));
      p.crumbs.appendChild(crumbButton(p, p.g.groups[j].label || "(graph)", "g" + j));
    });
  }

  function item(p, node, ref) {
    node.setAttribute("data-item", "1");
    p.items.set(node, ref);
    return node;
  }

  function drawGroupBar(p, gEl, j, w, hgt) {
    const sum = groupSummary(p.g, j, state.mode);
    if (sum.counts) {
      const total = [...sum.counts.values()].reduce((a, b) => a + b, 0);
      const order = [...sum.counts.keys()].sort();
      let x = 3;
      for (const c of order) {
        const cw = (w - 6) * sum.counts.get(c) / total;
        gEl.appendChild(s("rect", { x: x, y: hgt - 9, width: Math.max(cw, 0.5), height: 6,
                                    fill: catColour(state.mode, c), stroke: "none" }));
        x += cw;
      }
      return "#ffffff";
    }
    return sum.max === null ? "#ffffff" : heat(heatT(state.mode, sum.max));
  }

  function draw(p) {
    const v = p.g.views[p.view];
    const root = p.layer;
    clear(root);
    p.items = new Map();
    p.nodeEls = new Map();
    p.groupEls = new Map();
    for (const [gid, x, y, w, hh] of v.clusters) {
      const j = Number(gid.slice(1));
      const gr = p.g.groups[j];
      root.appendChild(s("rect", { class: "cluster", x: x, y: y, width: w, height: hh, rx: 6 }));
      const lab = item(p, s("g", { class: "cluster-label" }), { kind: "g", i: j });
      lab.appendChild(s("rect", { x: x, y: y, width: w, height: 16, fill: "transparent",
                                  stroke: "none" }));
      lab.appendChild(s("text", { class: "clabel", x: x + 6, y: y + 12 },
                        fit(gr.label + " (" + gr.n + ")", w - 12)));
      lab.appendChild(s("title", {}, gr.path));
      root.appendChild(lab);
    }
    for (const e of v.edges) {
      root.appendChild(s("path", { class: e.n > 1 ? "edge multi" : "edge", d: e.d,
                                   "marker-end": "url(#arrow-" + p.gi + ")" }));
      if (e.lp) {
        root.appendChild(s("text", { class: "elabel", x: e.lp[0], y: e.lp[1] + 3,
                                     "text-anchor": "middle" }, e.t));
      }
    }
    for (const [id, x, y, w, hh] of v.els) {
      const kind = id[0], i = Number(id.slice(1));
      const gEl = s("g", { transform: "translate(" + x + "," + y + ")" });
      if (kind === "n") {
        const n = p.g.nodes[i];
        gEl.setAttribute("class", "node" + (n.diff ? " diff-" + n.diff : ""));
        gEl.appendChild(s("rect", { width: w, height: hh, rx: 3, fill: nodeFill(n, state.mode) }));
        gEl.appendChild(s("text", { class: "op", x: w / 2, y: 14, "text-anchor": "middle" },
                          fit(n.op, w - 8)));
        gEl.appendChild(s("text", { x: w / 2, y: 28, "text-anchor": "middle" }, fit(n.key, w - 8)));
        gEl.appendChild(s("title", {}, n.op + " " + n.key + (n.src ? "\n" + n.src : "")));
        item(p, gEl, { kind: "n", i: i });
        p.nodeEls.set(i, gEl);
      } else if (kind === "g") {
        const gr = p.g.groups[i];
        gEl.setAttribute("class", "group");
        const box = s("rect", { class: "box", width: w, height: hh, rx: 8 });
        gEl.appendChild(box);
        gEl.appendChild(s("rect", { class: "inner", x: 3, y: 3, width: w - 6, height: hh - 6, rx: 6 }));
        box.setAttribute("fill", drawGroupBar(p, gEl, i, w, hh));
        gEl.appendChild(s("text", { x: w / 2, y: 19, "text-anchor": "middle", class: "op" },
                          fit(gr.label + " (" + gr.n + ")", w - 14)));
        gEl.appendChild(s("title", {}, gr.path + "\n" + gr.n + " nodes: click to open"));
        item(p, gEl, { kind: "g", i: i });
        p.groupEls.set(i, gEl);
      } else {
        const info = v.ports[id];
        gEl.setAttribute("class", "port");
        gEl.appendChild(s("rect", { width: w, height: hh, rx: hh / 2 }));
        gEl.appendChild(s("text", { x: w / 2, y: 15, "text-anchor": "middle" }, fit(info.value, w - 10)));
        gEl.appendChild(s("title", {}, "%" + info.value + ": " + info.type));
        item(p, gEl, { kind: "p", info: info });
      }
      root.appendChild(gEl);
    }
    markHits(p);
    markSelected(p);
  }

  function markHits(p) {
    const hits = state.hits[p.gi];
    for (const [i, el] of p.nodeEls) el.classList.toggle("hit", hits.has(i));
    for (const [j, el] of p.groupEls) {
      let k = 0;
      if (hits.size) for (const i of p.g.members[j]) if (hits.has(i)) k++;
      el.classList.toggle("hit", k > 0);
      const old = el.querySelector("text.badge");
      if (old) old.remove();
      if (k) {
        const w = Number(el.querySelector("rect.box").getAttribute("width"));
        el.appendChild(s("text", { class: "badge", x: w - 6, y: 31, "text-anchor": "end" },
                         k + " hit" + (k > 1 ? "s" : "")));
      }
    }
  }
  function markSelected(p) {
    for (const [i, el] of p.nodeEls) {
      const sel = state.selected;
      let on = false;
      if (sel) {
        const n = DATA.graphs[sel.gi].nodes[sel.i];
        on = (sel.gi === p.gi && sel.i === i) || (sel.gi !== p.gi && n.peer === i);
      }
      el.classList.toggle("selected", on);
    }
  }

  function openView(p, view, sync) {
    if (!p.g.views[view]) return;
    p.view = view;
    drawCrumbs(p);
    draw(p);
    fitView(p, false);
    if (view !== "all") {
      const j = Number(view.slice(1));
      if (sync) showGroup(p.gi, j);
      if (sync) {
        for (const q of panes) {
          if (q === p) continue;
          const k = q.g.byPath.get(p.g.groups[j].path);
          if (k !== undefined) openView(q, "g" + k, false);
        }
      }
    } else if (sync) {
      for (const q of panes) if (q !== p && q.g.views.all) openView(q, "all", false);
    }
  }

  function select(gi, i) {
    state.selected = { gi: gi, i: i };
    for (const p of panes) markSelected(p);
    showNode(gi, i);
  }

  function reveal(gi, i) {
    const p = panes.find((q) => q.gi === gi);
    const n = DATA.graphs[gi].nodes[i];
    if (p.view !== "all") openView(p, "g" + n.g, true);
    select(gi, i);
    const el = p.nodeEls.get(i);
    const v = p.g.views[p.view];
    const e = v.els.find((x) => x[0] === "n" + i);
    if (el && e) {
      const W = p.svg.clientWidth || 800, H = p.svg.clientHeight || 600;
      p.t.k = Math.max(p.t.k, 0.9);
      p.t.x = W / 2 - (e[1] + e[3] / 2) * p.t.k;
      p.t.y = H / 2 - (e[2] + e[4] / 2) * p.t.k;
      applyTransform(p);
    }
  }

  function runSearch() {
    const q = search.value.trim().toLowerCase();
    state.hits = DATA.graphs.map((g) => {
      const set = new Set();
      if (!q) return set;
      g.nodes.forEach((n, i) => {
        if (n.op.toLowerCase().includes(q) || n.key.toLowerCase().includes(q) ||
            n.name.toLowerCase().includes(q) ||
            n.outs.some((o) => o[0].toLowerCase().includes(q))) set.add(i);
      });
      return set;
    });
    let total = 0;
    for (const set of state.hits) total += set.size;
    count.textContent = q ? total + " match" + (total === 1 ? "" : "es") : "";
    for (const p of panes) markHits(p);
    if (q) showResults(state.hits);
  }

  // -- wiring -----------------------------------------------------------------------------
  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(runSearch, 120);
  });
  search.addEventListener("keydown", (ev) => {
    if (ev.key !== "Enter") return;
    runSearch();
    const gi = state.hits.findIndex((set) => set.size > 0);
    if (gi >= 0) reveal(gi, state.hits[gi].values().next().value);
  });
  modeSel.addEventListener("change", () => {
    state.mode = modeSel.value;
    drawLegend();
    for (const p of panes) draw(p);
  });
  labelsBox.addEventListener("change", () => {
    state.labels = labelsBox.checked;
    for (const p of panes) applyTransform(p);
  });
  fitBtn.addEventListener("click", () => { for (const p of panes) fitView(p, true); });

  DATA.graphs.forEach((g, gi) => makePane(gi));
  drawLegend();
  for (const p of panes) openView(p, p.g.initial, false);
  showHelp();
  document.body.setAttribute("data-ready", "1");
})();

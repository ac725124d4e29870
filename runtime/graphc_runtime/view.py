"""The HTML view of a compiled graph: one self-contained file (inline CSS and script, no
network), for Compiled.to_html and `graphc view model.gcx -o model.html`.

The compiler writes the view data (graphc/view.py view_data; artifacts keep it as a member);
here it is checked (it may come from an untrusted artifact), laid out and embedded in the page
as JSON, and a small script draws it: each graph as layered boxes coloured by kernel, with
shapes and dtypes on the edges and the source line on hover; the kernels with their ops,
source lines, fusion reasons and, given a profile, time bars; the buffer plan. The script
writes text with textContent only, so names and source lines from the data are never markup.

Layout: a layered drawing (each node just above its first reader), long edges routed through
stand-ins in the layers they cross, then a few barycentre sweeps to order each layer; no
recursion.
"""
from __future__ import annotations

import html
import json
import os

from .signature import DTYPES, size_from_json, size_value

VIEW_FORMAT = 1
NODE_W, NODE_H, GAP_X, GAP_Y, MARGIN = 128, 30, 18, 54, 16
SWEEPS = 4
ITEMSIZE = {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}
BEND_W, MAX_BENDS = 16, 20000   # a long edge's stand-in width; stand-ins in one drawing


class ViewDataError(ValueError):
    """View data that is not what view_data writes."""


# ------------------------------------------------------------------ checking

def check_view(data) -> dict:
    """Type-checks view data (from an artifact, so untrusted); raises ViewDataError saying
    what is wrong. Returns the data."""
    def need(ok, what):
        if not ok:
            raise ViewDataError(f"malformed view data: {what}")

    def strings(xs, what):
        need(isinstance(xs, list) and all(isinstance(x, str) for x in xs), what)

    def ints(xs, what):
        need(isinstance(xs, list) and all(_is_int(x) for x in xs), what)

    need(isinstance(data, dict), "not an object")
    need(data.get("graphc_view") == VIEW_FORMAT, f"graphc_view must be {VIEW_FORMAT}")
    for key in ("name", "target", "signature"):
        need(isinstance(data.get(key), str), f"{key} must be a string")
    graphs = data.get("graphs")
    need(isinstance(graphs, list) and graphs, "graphs must be a non-empty list")
    for g, graph in enumerate(graphs):
        need(isinstance(graph, dict), f"graphs[{g}] is not an object")
        need(isinstance(graph.get("title"), str) and isinstance(graph.get("parent"), str),
             f"graphs[{g}] needs a title and a parent")
        nodes, kernels = graph.get("nodes"), graph.get("kernels")
        need(isinstance(nodes, list) and isinstance(kernels, list),
             f"graphs[{g}] needs nodes and kernels lists")
        seen: set[int] = set()
        for n in nodes:
            need(isinstance(n, dict) and _is_int(n.get("id")) and n["id"] not in seen,
                 f"graphs[{g}]: a node without a unique integer id")
            for key in ("op", "role", "dtype", "loc", "attrs"):
                need(isinstance(n.get(key), str), f"graphs[{g}] node {n['id']}: {key}")
            ints(n.get("inputs"), f"graphs[{g}] node {n['id']}: inputs")
            need(all(i in seen for i in n["inputs"]),
                 f"graphs[{g}] node {n['id']} reads a node not before it")
            strings(n.get("shape"), f"graphs[{g}] node {n['id']}: shape")
            strings(n.get("inline"), f"graphs[{g}] node {n['id']}: inline")
            need(_is_int(n.get("kernel")) and -1 <= n["kernel"] < len(kernels),
                 f"graphs[{g}] node {n['id']}: kernel")
            need(_is_int(n.get("output")), f"graphs[{g}] node {n['id']}: output")
            seen.add(n["id"])
        for k, kernel in enumerate(kernels):
            need(isinstance(kernel, dict), f"graphs[{g}] kernels[{k}] is not an object")
            for key in ("name", "kind"):
                need(isinstance(kernel.get(key), str), f"graphs[{g}] kernels[{k}]: {key}")
            for key in ("space", "ops", "lines"):
                strings(kernel.get(key), f"graphs[{g}] kernels[{k}]: {key}")
            for key in ("nodes", "reads", "writes"):
                ints(kernel.get(key), f"graphs[{g}] kernels[{k}]: {key}")
            declined = kernel.get("declined")
            need(isinstance(declined, list) and all(
                isinstance(d, dict) and _is_int(d.get("producer")) and
                _is_int(d.get("consumer")) and isinstance(d.get("reason"), str)
                for d in declined), f"graphs[{g}] kernels[{k}]: declined")
    plan = data.get("plan")
    need(isinstance(plan, dict), "plan must be an object")
    slots = plan.get("slots")
    need(isinstance(slots, list), "plan.slots must be a list")
    for s, slot in enumerate(slots):
        need(isinstance(slot, dict) and isinstance(slot.get("sizes"), list),
             f"plan.slots[{s}] needs sizes")
        try:
            [size_from_json(x) for x in slot["sizes"]]
        except ValueError as err:
            raise ViewDataError(f"malformed view data: plan.slots[{s}]: {err}") from None
        ints(slot.get("values"), f"plan.slots[{s}].values")
    ints(plan.get("constants"), "plan.constants")
    for key in ("inputs", "outputs"):
        need(isinstance(plan.get(key), list) and all(
            isinstance(x, dict) and x.get("dtype") in DTYPES and
            isinstance(x.get("shape"), list) for x in plan[key]), f"plan.{key}")
        for x in plan[key]:
            for d in x["shape"]:
                try:
                    d if isinstance(d, str) else size_from_json(d)
                except ValueError as err:
                    raise ViewDataError(f"malformed view data: plan.{key}: {err}") from None
    return data


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# ------------------------------------------------------------------ layout

def layout(nodes: list[dict]) -> tuple[dict, dict]:
    """(x, y) of each node's centre, and the bends of each edge that spans several layers
    ("producer>consumer" -> points): layers top to bottom, each node below its inputs and
    just above its first reader (a gradient's weight transpose sits by its use). A long edge passes through a narrow
    stand-in node in each layer it crosses (up to MAX_BENDS in all; past that, long edges are
    drawn straight), so ordering the layers routes it around the nodes in between."""
    ids = [n["id"] for n in nodes]
    present = set(ids)
    inputs = {n["id"]: list(dict.fromkeys(i for i in n["inputs"] if i in present))
              for n in nodes}
    readers: dict = {i: [] for i in ids}
    layer: dict = {}
    for i in ids:
        layer[i] = 1 + max((layer[j] for j in inputs[i]), default=-1)
        for j in inputs[i]:
            readers[j].append(i)
    for i in reversed(ids):   # then each node as late as its readers allow
        if readers[i]:
            layer[i] = min(layer[r] for r in readers[i]) - 1
    # stand-ins ("b", producer, consumer, layer) for the layers a long edge crosses
    chains: dict = {}
    bends = 0
    for i in ids:
        for j in inputs[i]:
            span = range(layer[j] + 1, layer[i])
            if len(span) and bends + len(span) <= MAX_BENDS:
                chain = [("b", j, i, t) for t in span]
                bends += len(chain)
                chains[j, i] = chain
                for k, b in enumerate(chain):
                    layer[b] = b[3]
                    inputs[b] = [chain[k - 1] if k else j]
                    readers[b] = [chain[k + 1] if k + 1 < len(chain) else i]
                inputs[i] = [chain[-1] if x == j else x for x in inputs[i]]
                readers[j] = [chain[0] if x == i else x for x in readers[j]]
    rows: list[list] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for v in list(ids) + [b for chain in chains.values() for b in chain]:
        rows[layer[v]].append(v)
    pos: dict = {}

    def width(v) -> int:
        return BEND_W if isinstance(v, tuple) else NODE_W

    def place():
        for row in rows:
            total = sum(width(v) for v in row) + GAP_X * (len(row) - 1)
            x = -total / 2
            for v in row:
                pos[v] = x + width(v) / 2
                x += width(v) + GAP_X

    def order(row, neighbours):
        keyed = [(sum(pos[u] for u in neighbours[v]) / len(neighbours[v])
                  if neighbours[v] else pos[v], k, v) for k, v in enumerate(row)]
        row[:] = [v for _, _, v in sorted(keyed)]

    place()
    for _ in range(SWEEPS):
        for row in rows[1:]:
            order(row, inputs)
        place()
        for row in reversed(rows[:-1]):
            order(row, readers)
        place()
    left = min((pos[v] - width(v) / 2 for v in pos), default=0)

    def xy(v):
        return (int(pos[v] - left + MARGIN), int(MARGIN + NODE_H / 2 + layer[v] * (NODE_H + GAP_Y)))
    routes = {f"{j}>{i}": [xy(b) for b in chain] for (j, i), chain in chains.items()}
    return {i: xy(i) for i in ids}, routes


# ------------------------------------------------------------------ sizes as text

def size_text(size) -> str:
    size = size_from_json(size)
    if isinstance(size, int):
        return str(size)
    coef, syms = size
    return "*".join(([str(coef)] if coef != 1 or not syms else []) + list(syms))


def bytes_text(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _slot_text(sizes, dims) -> tuple[str, object]:
    """A slot's size (the largest of its candidates) as text, and as bytes when the sizes are
    static or `dims` binds them, else as the one symbolic size or None (a max of several)."""
    parsed = [size_from_json(s) for s in sizes]
    try:
        n = max((size_value(s, dims or {}) for s in parsed), default=0)
        return bytes_text(n), n
    except (KeyError, TypeError, ValueError):
        pass
    texts = [size_text(s) for s in sizes]
    if len(texts) == 1:
        return f"{texts[0]} bytes", parsed[0]
    return f"max({', '.join(texts)}) bytes", None


def _plan_view(plan: dict, dims) -> dict:
    slots, workspace = [], []
    for slot in plan["slots"]:
        text, n = _slot_text(slot["sizes"], dims)
        slots.append({"size": text, "values": slot["values"]})
        workspace.append(text[:-len(" bytes")] if n is None else n)
    arrays = [_array_bytes(x["dtype"], x["shape"], dims) for x in plan["inputs"] + plan["outputs"]]
    consts = sum(plan["constants"])
    return {"slots": slots, "workspace": _total_text(workspace),
            "peak": _total_text(workspace + arrays + [consts]),
            "constants": bytes_text(consts), "constant_count": len(plan["constants"]),
            "inputs": [f"{x.get('name', '')}: {x['dtype']}[{', '.join(map(_dim_text, x['shape']))}]"
                       for x in plan["inputs"]],
            "outputs": [f"{k}: {x['dtype']}[{', '.join(map(_dim_text, x['shape']))}]"
                        for k, x in enumerate(plan["outputs"])],
            "dims": dict(dims or {})}


def _array_bytes(dtype: str, shape, dims):
    """An array's bytes: an int when its sizes are known, else (coef, symbols)."""
    coef, syms = ITEMSIZE[dtype], []
    for d in shape:
        size = d if isinstance(d, str) else size_from_json(d)
        if isinstance(size, str):
            syms.append(size)
        elif isinstance(size, int):
            coef *= size
        else:
            coef *= size[0]
            syms += size[1]
    if syms and dims is not None and all(x in dims for x in syms):
        for x in syms:
            coef *= dims[x]
        syms = []
    return (coef, tuple(sorted(syms))) if syms else coef


def _total_text(values) -> str:
    """A sum of byte counts (ints), monomials ((coef, symbols): like terms add up) and texts."""
    known, terms, other = 0, {}, []
    for v in values:
        if isinstance(v, int):
            known += v
        elif isinstance(v, str):
            other.append(v)
        else:
            terms[v[1]] = terms.get(v[1], 0) + v[0]
    parts = [size_text([c, list(syms)]) for syms, c in terms.items()] + other
    if not parts:
        return bytes_text(known)
    return " + ".join(([str(known)] if known else []) + parts) + " bytes"


def _dim_text(d) -> str:
    return d if isinstance(d, str) else size_text(d)


# ------------------------------------------------------------------ the page

def render_html(data: dict, profile=None) -> str:
    """The page for view data (and a Profile, or its to_json() data, for time bars)."""
    check_view(data)
    prof = profile.to_json() if hasattr(profile, "to_json") else profile
    if prof is not None and not (isinstance(prof, dict) and isinstance(prof.get("rows"), list)):
        raise ViewDataError("profile must be a Profile or its to_json() data")
    dims = prof.get("dims") if prof else None
    page = {
        "name": data["name"], "target": data["target"], "signature": data["signature"],
        "graphs": [_placed(g) for g in data["graphs"]],
        "plan": _plan_view(data["plan"], dims if isinstance(dims, dict) else None),
        "profile": prof,
        "box": [NODE_W, NODE_H],
    }
    # "<" escaped so no string in the data can close the script element
    payload = json.dumps(page, separators=(",", ":")).replace("<", "\\u003c")
    title = html.escape(f"graphc: {data['name']}")
    return (_PAGE.replace("__TITLE__", title).replace("__CSS__", _CSS)
            .replace("__SCRIPT__", _SCRIPT).replace("__DATA__", payload))


def artifact_view(path: str) -> dict:
    """The view data an artifact carries (checked), for `graphc view`."""
    from .artifact import read_manifest
    from .errors import LoadError
    manifest, data = read_manifest(path)
    if "view" not in manifest:
        raise LoadError(f"{path}: this artifact carries no view data (it was exported by a "
                        f"graphc without `graphc view`); export it again")
    try:
        return check_view(json.loads(data[manifest["view"]].decode("utf-8")))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise LoadError(f"{path}: {manifest['view']}: {err}") from None


def _placed(graph: dict) -> dict:
    where, routes = layout(graph["nodes"])
    return {**graph, "layout": {str(i): xy for i, xy in where.items()}, "routes": routes}


def write_html(path: str, data: dict, profile=None) -> str:
    text = render_html(data, profile)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>__CSS__</style></head>
<body>
<header><h1 id="title"></h1><div id="summary"></div></header>
<main>
<div id="graphs"></div>
<aside id="info"><h3>Node</h3><div id="info-body">Hover over a node.</div></aside>
</main>
<section id="time" hidden><h2>Where the time goes</h2><div id="time-bars"></div></section>
<section><h2>Kernels</h2><p class="note">In execution order. Click a kernel to pick out its
nodes in the graph.</p><div id="kernels"></div></section>
<section><h2>Buffer plan</h2><div id="plan"></div></section>
<script type="application/json" id="graphc-data">__DATA__</script>
<script>__SCRIPT__</script>
</body></html>
"""

_CSS = """
body{font:13px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d2330;background:#f7f8fa}
header{padding:12px 20px;background:#1d2330;color:#fff}h1{font-size:18px;margin:0 0 4px}
#summary{opacity:.85;font-family:ui-monospace,monospace;font-size:12px}
main{display:flex;gap:12px;padding:12px 20px;align-items:flex-start}
#graphs{flex:1;min-width:0}
.graph{background:#fff;border:1px solid #dde1e8;border-radius:6px;margin-bottom:12px}
.graph h2{font-size:14px;margin:0;padding:8px 12px;border-bottom:1px solid #eef0f4}
.canvas{overflow:auto;max-height:78vh}
aside{position:sticky;top:12px;width:300px;background:#fff;border:1px solid #dde1e8;
border-radius:6px;padding:8px 12px;font-size:12px;word-break:break-word}
aside h3{margin:0 0 6px;font-size:13px}
section{padding:4px 20px 12px}section h2{font-size:15px;margin:8px 0}
.note{color:#5b6475;margin:0 0 8px}
.node rect{stroke:#4a5568;stroke-width:1}.node text{font:11px ui-monospace,monospace;
pointer-events:none}.node{cursor:pointer}
.node.input rect{fill:#fff;stroke-width:1.6}.node.const rect{fill:#eceef2;stroke-dasharray:3 2}
.node.view rect{fill:#fff;stroke-dasharray:2 2}.node.out rect{stroke-width:2.4}
.edge{fill:none;stroke:#9aa3b2;stroke-width:1.2}.edge.cross{stroke:#c2410c;stroke-dasharray:5 3}
.elabel{font:9px ui-monospace,monospace;fill:#5b6475;paint-order:stroke;stroke:#fff;
stroke-width:3px}
svg.picking .node:not(.picked){opacity:.25}svg.picking .edge{opacity:.3}
.kernel-box{background:#fff;border:1px solid #dde1e8;border-left:6px solid #999;
border-radius:6px;padding:6px 10px;margin-bottom:6px;cursor:pointer}
.kernel-box.picked{outline:2px solid #1d2330}
.kernel-box .kname{font:600 12px ui-monospace,monospace}
.kernel-box .meta{color:#5b6475;font-size:12px}
.kernel-box ul{margin:4px 0 0;padding-left:18px;font-size:12px}
.declined{color:#9a3412}.body-kernels{margin:6px 0 0 18px}
.bar{height:8px;background:#3b82f6;border-radius:2px;margin:3px 0}
.barrow{display:grid;grid-template-columns:300px 1fr 340px;gap:8px;align-items:center;white-space:nowrap;
font:12px ui-monospace,monospace}.barrow .bar{margin:0}
table{border-collapse:collapse;background:#fff;font-size:12px}
td,th{border:1px solid #dde1e8;padding:3px 8px;text-align:left;vertical-align:top}
code,.mono{font-family:ui-monospace,monospace}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var errors = [];
  window.addEventListener("error", function (e) {
    errors.push(String(e.message));
    document.body.setAttribute("data-errors", errors.join(" | "));
  });
  var data = JSON.parse(document.getElementById("graphc-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var W = data.box[0], H = data.box[1];

  function el(tag, attrs, parent, text) {
    var e = tag.indexOf("svg:") === 0 ? document.createElementNS(NS, tag.slice(4)) :
      document.createElement(tag);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    if (text !== undefined) { e.textContent = text; }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function hue(k) { return (k * 137.508 + 200) % 360; }
  function colour(k, light) {
    return k < 0 ? "#ffffff" : "hsl(" + hue(k) + ",62%," + (light ? "82%" : "42%") + ")";
  }
  var SHORT = {float32: "f32", float64: "f64", int32: "i32", int64: "i64", bool: "bool"};
  function typeText(n) { return (SHORT[n.dtype] || n.dtype) + "[" + n.shape.join(", ") + "]"; }
  function ms(s) { return s >= 1e-3 ? (s * 1e3).toFixed(3) + " ms" : (s * 1e6).toFixed(1) + " us"; }

  // profile rows by (scan kernel, kernel name)
  var rows = {}, prof = data.profile;
  if (prof) { prof.rows.forEach(function (r) { rows[(r.inside || "") + "/" + r.kernel] = r; }); }

  el("span", {}, document.getElementById("title"), "graphc view: " + data.name);
  var kernelCount = 0;
  data.graphs.forEach(function (g) { kernelCount += g.kernels.length; });
  var summary = data.signature + "  on " + data.target + "  |  " + data.graphs[0].nodes.length +
    " nodes, " + data.graphs[0].kernels.length + " kernels";
  if (data.graphs.length > 1) { summary += " (" + kernelCount + " with loop bodies)"; }
  if (prof) { summary += "  |  " + ms(prof.total) + " a call (median of " + prof.repeat + ")"; }
  document.getElementById("summary").textContent = summary;

  var info = document.getElementById("info-body");
  function showNode(g, n) {
    info.textContent = "";
    el("div", {"class": "mono"}, info, "%" + n.id + " = " + n.op + (n.attrs ? "(" + n.attrs + ")" : ""));
    el("div", {"class": "mono"}, info, typeText(n) + (n.output >= 0 ? "  (output " + n.output + ")" : ""));
    var k = n.kernel >= 0 ? g.kernels[n.kernel] : null;
    el("div", {}, info, k ? "kernel: " + k.name : "role: " + n.role + " (not computed by a kernel)");
    if (n.inputs.length) { el("div", {"class": "mono"}, info, "reads: " + n.inputs.map(function (i) { return "%" + i; }).join(", ")); }
    n.inline.forEach(function (t) { el("div", {"class": "mono"}, info, "inline: " + t); });
    if (n.loc) { el("div", {"class": "mono"}, info, n.loc); }
  }

  var svgs = [];
  var graphsDiv = document.getElementById("graphs");
  data.graphs.forEach(function (g, gi) {
    var sec = el("div", {"class": "graph"}, graphsDiv);
    el("h2", {}, sec, g.title + "  (" + g.nodes.length + " nodes, " + g.kernels.length + " kernels)");
    var canvas = el("div", {"class": "canvas"}, sec);
    var pos = g.layout, maxX = 0, maxY = 0;
    g.nodes.forEach(function (n) { var p = pos[n.id]; maxX = Math.max(maxX, p[0]); maxY = Math.max(maxY, p[1]); });
    var svg = el("svg:svg", {width: maxX + W / 2 + 16, height: maxY + H / 2 + 16, "data-graph": gi}, canvas);
    svgs.push(svg);
    var byId = {};
    g.nodes.forEach(function (n) { byId[n.id] = n; });
    var why = {};
    g.kernels.forEach(function (k) {
      k.declined.forEach(function (d) { var key = d.producer + ">" + d.consumer; (why[key] = why[key] || []).push(d.reason); });
    });
    var edges = el("svg:g", {}, svg), labels = el("svg:g", {}, svg), boxes = el("svg:g", {}, svg);
    g.nodes.forEach(function (n) {
      var q = pos[n.id];
      n.inputs.forEach(function (i) {
        var src = byId[i];
        if (!src) { return; }
        var p = pos[i];
        // through the long edge's bends (layout), each step a curve with vertical ends
        var pts = [[p[0], p[1] + H / 2]].concat(g.routes[i + ">" + n.id] || [], [[q[0], q[1] - H / 2]]);
        var d = "M" + pts[0][0] + "," + pts[0][1];
        for (var s = 1; s < pts.length; s++) {
          var a = pts[s - 1], b = pts[s], m = (a[1] + b[1]) / 2;
          d += " C" + a[0] + "," + m + " " + b[0] + "," + m + " " + b[0] + "," + b[1];
        }
        var cross = src.kernel !== n.kernel || n.kernel < 0;
        var path = el("svg:path", {"class": "edge" + (cross && src.kernel >= 0 && n.kernel >= 0 ? " cross" : ""),
          d: d}, edges);
        var reasons = why[i + ">" + n.id];
        el("svg:title", {}, path, "%" + i + " -> %" + n.id + ": " + typeText(src) +
          (reasons ? "\nnot fused: " + reasons.join("; ") : ""));
        if (pts.length === 2) {   // long edges keep their type in the hover text only
          // nearer the producer, so the labels of edges that meet stay apart
          el("svg:text", {"class": "elabel", x: pts[0][0] + 0.2 * (pts[1][0] - pts[0][0]) + 3,
            y: pts[0][1] + 0.4 * (pts[1][1] - pts[0][1]) + 3}, labels, typeText(src));
        }
      });
      var cls = "node " + n.role + (n.output >= 0 ? " out" : "") + (n.kernel >= 0 ? " k" + n.kernel : "");
      var box = el("svg:g", {"class": cls, "data-id": n.id, "data-kernel": n.kernel,
        transform: "translate(" + (q[0] - W / 2) + "," + (q[1] - H / 2) + ")"}, boxes);
      el("svg:rect", {width: W, height: H, rx: 5, fill: n.role === "op" ? colour(n.kernel, true) : "",
        stroke: n.kernel >= 0 ? colour(n.kernel, false) : ""}, box);
      var label = n.op + " %" + n.id;
      el("svg:text", {x: 6, y: 13}, box, label.length > 19 ? label.slice(0, 18) + "\u2026" : label);
      var sub = typeText(n);
      el("svg:text", {x: 6, y: 25, "fill": "#4a5568"}, box, sub.length > 20 ? sub.slice(0, 19) + "\u2026" : sub);
      var tip = "%" + n.id + " = " + n.op + " : " + typeText(n) +
        (n.kernel >= 0 ? "\nkernel " + g.kernels[n.kernel].name : "") + (n.loc ? "\n" + n.loc : "");
      el("svg:title", {}, box, tip);
      box.addEventListener("mouseenter", function () { showNode(g, n); });
      box.addEventListener("click", function () { pick(gi, n.kernel); });
    });
  });

  var picked = null;
  function pick(gi, k) {
    var same = picked && picked[0] === gi && picked[1] === k;
    picked = same || k < 0 ? null : [gi, k];
    svgs.forEach(function (svg, i) {
      svg.classList.toggle("picking", picked !== null && picked[0] === i);
      var nodes = svg.querySelectorAll(".node");
      for (var j = 0; j < nodes.length; j++) {
        nodes[j].classList.toggle("picked", picked !== null && picked[0] === i &&
          nodes[j].getAttribute("data-kernel") === String(k));
      }
    });
    var boxes = document.querySelectorAll(".kernel-box");
    for (var j = 0; j < boxes.length; j++) {
      boxes[j].classList.toggle("picked", picked !== null &&
        boxes[j].getAttribute("data-graph") === String(gi) && boxes[j].getAttribute("data-index") === String(k));
    }
  }

  function timeText(r) {
    return ms(r.time) + "  " + (100 * r.share).toFixed(1) + "%  " + r.gbps.toFixed(1) + " GB/s  " +
      r.gflops.toFixed(1) + " GFLOP/s";
  }
  function kernelBox(parent, g, gi, k, idx) {
    var box = el("div", {"class": "kernel-box", "data-graph": gi, "data-index": idx, "data-kernel": k.name}, parent);
    box.style.borderLeftColor = colour(idx, false);
    el("div", {"class": "kname"}, box, k.name);
    el("div", {"class": "meta"}, box, k.kind + " over (" + k.space.join(", ") + ")  |  ops: " + k.ops.join(" ") +
      "  |  reads " + k.reads.map(function (i) { return "%" + i; }).join(", ") + " -> writes " +
      k.writes.map(function (i) { return "%" + i; }).join(", "));
    var r = rows[g.parent + "/" + k.name];
    if (r) {
      var bar = el("div", {"class": "bar"}, box);
      bar.style.width = Math.max(0.5, Math.min(100, 100 * r.share)) + "%";
      el("div", {"class": "meta mono"}, box, timeText(r));
    }
    if (k.lines.length) {
      var ul = el("ul", {}, box);
      k.lines.forEach(function (line) { el("li", {"class": "mono"}, ul, line); });
    }
    if (k.declined.length) {
      var ul2 = el("ul", {}, box);
      k.declined.forEach(function (d) {
        el("li", {"class": "declined"}, ul2, "not fused: %" + d.producer + " -> %" + d.consumer + ": " + d.reason);
      });
    }
    box.addEventListener("click", function (ev) { ev.stopPropagation(); pick(gi, idx); });
    return box;
  }
  var list = document.getElementById("kernels");
  var holders = {"": list};
  data.graphs.forEach(function (g, gi) {
    var parent = holders[g.parent] || list;
    if (g.parent) { parent = el("div", {"class": "body-kernels"}, parent); el("div", {"class": "meta"}, parent, g.title); }
    g.kernels.forEach(function (k, idx) {
      var box = kernelBox(parent, g, gi, k, idx);
      holders[k.name] = box;
    });
  });

  if (prof) {
    document.getElementById("time").hidden = false;
    var bars = document.getElementById("time-bars");
    var sorted = prof.rows.slice().sort(function (a, b) { return b.time - a.time; });
    sorted.forEach(function (r) {
      var row = el("div", {"class": "barrow"}, bars);
      el("span", {}, row, (r.inside ? "  " + r.inside + " / " : "") + r.kernel);
      var holder = el("div", {}, row);
      var bar = el("div", {"class": "bar"}, holder);
      bar.style.width = Math.max(0.5, Math.min(100, 100 * r.share)) + "%";
      el("span", {}, row, timeText(r));
    });
    if (prof.untimed && prof.untimed.length) {
      el("p", {"class": "note"}, bars, "Run in bands of rows, timed with their loop: " + prof.untimed.join(", "));
    }
  }

  var plan = data.plan, planDiv = document.getElementById("plan");
  el("p", {}, planDiv, "Peak memory of a call: " + plan.peak + " (inputs, outputs, constants and workspace)" +
    (Object.keys(plan.dims).length ? "  for " + JSON.stringify(plan.dims) : ""));
  el("p", {}, planDiv, "Workspace: " + plan.workspace + " in " + plan.slots.length + " slot(s); constants: " +
    plan.constants + " in " + plan.constant_count + " array(s)");
  el("p", {"class": "mono"}, planDiv, "inputs: " + plan.inputs.join("; "));
  el("p", {"class": "mono"}, planDiv, "outputs: " + plan.outputs.join("; "));
  var writer = {};
  data.graphs[0].kernels.forEach(function (k) { k.writes.forEach(function (v) { writer[v] = k.name; }); });
  var table = el("table", {}, planDiv), head = el("tr", {}, table);
  ["slot", "bytes", "values (written by)"].forEach(function (t) { el("th", {}, head, t); });
  plan.slots.forEach(function (s, i) {
    var tr = el("tr", {"class": "slot"}, table);
    el("td", {}, tr, String(i));
    el("td", {"class": "mono"}, tr, s.size);
    el("td", {"class": "mono"}, tr, s.values.length ? s.values.map(function (v) {
      return "%" + v + (writer[v] ? " (" + writer[v] + ")" : ""); }).join(", ") : "a loop body's scratch");
  });

  var first = data.graphs[0].nodes.filter(function (n) { return n.kernel >= 0; })[0];
  if (first) { showNode(data.graphs[0], first); }
  document.body.setAttribute("data-kernels", String(document.querySelectorAll(".kernel-box").length));
  document.body.setAttribute("data-nodes", String(document.querySelectorAll(".node").length));
  document.body.setAttribute("data-rendered", "yes");
})();
"""

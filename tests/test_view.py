"""The HTML view: Compiled.to_html and `graphc view` (graphc/view.py, graphc_runtime/view.py).

The data is checked against the compiled graph itself (kernels, plan, explain's reasons); the
page is opened in headless Chromium (tests/browser.py), which runs its script: the test reads
back from the DOM how many kernel boxes and graph nodes it drew, and any script error."""
from __future__ import annotations

import copy
import json
import re
import time
import zipfile

import numpy as np
import pytest

import graphc
from graphc.view import view_data
from graphc_runtime.cli import main as cli
from graphc_runtime.view import (NODE_W, ViewDataError, check_view, layout, render_html,
                                 write_html)

import browser


def _softmax_mlp():
    def f(x, w):
        h = graphc.relu(x @ w + 0.5)
        return graphc.softmax(h * 2.0), h.sum()
    return graphc.compile(f, graphc.tensor(("B", 8)), graphc.tensor((8, 4)))


def _training_step(layers=4):
    def loss(ws, x, y):
        h = x
        for w in ws[:-1]:
            h = graphc.tanh(h @ w)
        return -graphc.mean(graphc.sum(graphc.log_softmax(h @ ws[-1]) * y, axis=-1))
    return graphc.compile(graphc.value_and_grad(loss), [graphc.tensor((16, 16))] * layers,
                          graphc.tensor(("B", 16)), graphc.tensor(("B", 16)))


def _rnn():
    def step(h, x):
        h = graphc.tanh(h @ graphc.constant(np.eye(8, dtype=np.float32) * 0.5) + x)
        return h, graphc.sigmoid(h)
    return graphc.compile(lambda h0, xs: graphc.scan(step, h0, xs),
                          graphc.tensor(("B", 8)), graphc.tensor(("T", "B", 8)))


def _embedded(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="graphc-data">(.*?)</script>', page, re.S)
    assert m is not None
    return json.loads(m.group(1))


def _all_kernels(kernels):
    out, todo = [], list(kernels)
    while todo:
        k = todo.pop(0)
        out.append(k)
        if k.body is not None:
            todo += k.body[1]
    return out


def test_view_data_has_every_kernel_node_and_the_fusion_reasons():
    f = _softmax_mlp()
    data = check_view(json.loads(json.dumps(view_data(f))))
    (top,) = data["graphs"]
    assert [k["name"] for k in top["kernels"]] == [k.name for k in f.kernels]
    for t, k in enumerate(f.kernels):
        assert sorted(n["id"] for n in top["nodes"] if n["kernel"] == t) == sorted(k.nodes)
    drawn = {n["id"] for n in top["nodes"]}
    scalars = [n.id for n in f.graph.nodes if n.op == "constant"]
    assert scalars and not drawn & set(scalars)   # 0.5, 0 and 2.0 are read inside kernels
    add = next(n for n in top["nodes"] if n["op"] == "add")
    half = f.graph[add["id"]].inputs[1]
    assert add["inline"] == [f"%{half} = 0.5"] and half not in add["inputs"]
    assert all(i in drawn for n in top["nodes"] for i in n["inputs"])
    want = sorted((d.producer, d.consumer, d.reason) for d in f.explain().declined)
    got = sorted((d["producer"], d["consumer"], d["reason"])
                 for k in top["kernels"] for d in k["declined"])
    assert got == want and got
    assert "softmax" in next(n["loc"] for n in top["nodes"] if n["op"] == "exp")
    assert len(data["plan"]["slots"]) == len(f.plan.slots)
    outputs = sorted(n["output"] for n in top["nodes"] if n["output"] >= 0)
    assert outputs == [0, 1]


def test_a_scans_body_is_a_graph_of_its_own():
    f = _rnn()
    data = view_data(f)
    (scan,) = [k for k in f.kernels if k.kind == "scan"]
    titles = [g["parent"] for g in data["graphs"]]
    assert titles == ["", scan.name]
    assert [k["name"] for k in data["graphs"][1]["kernels"]] == [k.name for k in scan.body[1]]


def test_layout_puts_nodes_below_their_inputs_apart_and_routes_long_edges():
    data = view_data(_training_step())
    nodes = data["graphs"][0]["nodes"]
    where, routes = layout(nodes)
    for n in nodes:
        for i in n["inputs"]:
            assert where[n["id"]][1] > where[i][1]
            bends = routes.get(f"{i}>{n['id']}", [])
            ys = [where[i][1]] + [y for _, y in bends] + [where[n["id"]][1]]
            assert ys == sorted(set(ys))            # one bend per layer crossed
    rows: dict[int, list[int]] = {}
    for i, (x, y) in where.items():
        rows.setdefault(y, []).append(x)
    for xs in rows.values():
        xs.sort()
        assert all(b - a >= NODE_W for a, b in zip(xs, xs[1:]))
    assert routes, "a training step has edges from the forward pass to the backward pass"


def test_layout_of_a_deep_graph_needs_no_recursion():
    n = 20000   # far deeper than Python's recursion limit
    nodes = [{"id": i, "inputs": [i - 1] if i else []} for i in range(n)]
    nodes += [{"id": n, "inputs": [0, n - 1]}]      # and one edge over every layer
    start = time.perf_counter()
    where, routes = layout(nodes)
    assert time.perf_counter() - start < 20
    assert where[n - 1][1] > where[0][1] and len(routes[f"0>{n}"]) == n - 1


def test_the_page_is_self_contained_and_its_data_cannot_close_the_script():
    data = view_data(_softmax_mlp())
    evil = "</script><script>document.title='owned'</script>"
    data["graphs"][0]["nodes"][2]["loc"] = evil
    page = render_html(data)
    assert evil not in page and "<\\/script>" not in page
    assert _embedded(page)["graphs"][0]["nodes"][2]["loc"] == evil
    assert "<link" not in page and " src=" not in page and "https://" not in page
    assert set(re.findall(r"http://[^\"' ]*", page)) == {"http://www.w3.org/2000/svg"}


@pytest.mark.parametrize("break_it, what", [
    (lambda d: d.pop("graphs"), "graphs"),
    (lambda d: d["graphs"][0]["nodes"][3].update(inputs=[999]), "reads a node not before it"),
    (lambda d: d["graphs"][0]["nodes"][3].update(kernel=50), "kernel"),
    (lambda d: d["graphs"][0]["kernels"][0].update(ops="add"), "ops"),
    (lambda d: d["plan"]["slots"][0].update(sizes=[[1, [2]]]), "slots"),
    (lambda d: d.update(graphc_view=99), "graphc_view"),
    (lambda d: d["plan"]["inputs"][0].update(dtype="complex64"), "plan.inputs"),
])
def test_malformed_view_data_is_refused_naming_the_field(break_it, what):
    data = copy.deepcopy(view_data(_softmax_mlp()))
    break_it(data)
    with pytest.raises(ViewDataError, match=re.escape(what)):
        render_html(data)


def test_a_profile_adds_time_bars_and_binds_the_plan_sizes(rng):
    f = _softmax_mlp()
    x = rng.standard_normal((64, 8)).astype(np.float32)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    bare = _embedded(render_html(view_data(f)))
    assert bare["profile"] is None
    assert bare["plan"]["workspace"] == "32*B bytes"    # two (B, 4) float32 slots
    # + x (B, 8), w (8, 4) and the outputs (B, 4) and ()
    assert bare["plan"]["peak"] == "132 + 80*B bytes"
    p = f.profile(x, w, repeat=3)
    assert p.dims == {"B": 64}
    page = _embedded(render_html(view_data(f), p))
    assert [r["kernel"] for r in page["profile"]["rows"]] == [k.name for k in f.kernels]
    assert page["plan"]["workspace"] == "2.0 KiB"       # 2 * 64 * 4 * 4 bytes
    assert page["plan"]["peak"] == f"{(132 + 80 * 64) / 1024:.1f} KiB"
    assert _embedded(render_html(view_data(f), p.to_json()))["profile"] == page["profile"]
    with pytest.raises(ViewDataError, match="profile"):
        render_html(view_data(f), {"total": 1.0})


def test_graphc_view_writes_the_page_of_an_artifact(tmp_path, capsys):
    f = _softmax_mlp()
    gcx = f.export(str(tmp_path / "m.gcx"))
    assert cli(["view", gcx, "-o", str(tmp_path / "m.html")]) == 0
    page = _embedded((tmp_path / "m.html").read_text())
    assert [k["name"] for k in page["graphs"][0]["kernels"]] == [k.name for k in f.kernels]
    assert cli(["view", gcx, "--profile", "--batch", "8", "--repeat", "2"]) == 0
    page = _embedded((tmp_path / "m.html").read_text())      # the default name
    assert page["plan"]["dims"] == {"B": 8} and len(page["profile"]["rows"]) == len(f.kernels)

    # an artifact without view data (as from an older graphc) is refused in one line
    old = tmp_path / "old.gcx"
    with zipfile.ZipFile(gcx) as z, zipfile.ZipFile(old, "w") as out:
        manifest = json.loads(z.read("manifest.json"))
        member = manifest.pop("view")
        del manifest["files"][member], manifest["sizes"][member]
        out.writestr("manifest.json", json.dumps(manifest))
        for name in z.namelist():
            if name not in ("manifest.json", member):
                out.writestr(name, z.read(name))
    capsys.readouterr()
    assert cli(["view", str(old)]) == 2
    assert "carries no view data" in capsys.readouterr().err


needs_chromium = pytest.mark.skipif(browser.find_chromium() is None,
                                    reason="no Chromium (Debian: apt-get install chromium)")


@needs_chromium
def test_the_page_renders_in_chromium(rng, tmp_path):
    f = _rnn()
    h0 = rng.standard_normal((4, 8)).astype(np.float32)
    xs = rng.standard_normal((6, 4, 8)).astype(np.float32)
    page = f.to_html(str(tmp_path / "rnn.html"), profile=f.profile(h0, xs, repeat=3))
    body = browser.body_attributes(browser.dump_dom(page))
    assert body.get("data-rendered") == "yes" and "data-errors" not in body, body
    data = view_data(f)
    assert int(body["data-kernels"]) == len(_all_kernels(f.kernels)) > len(f.kernels)
    assert int(body["data-nodes"]) == sum(len(g["nodes"]) for g in data["graphs"])
    png = browser.screenshot(page, str(tmp_path / "rnn.png"), 900, 700)
    blob = open(png, "rb").read()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 10_000


@needs_chromium
def test_the_browser_check_sees_a_script_error(tmp_path):
    page = render_html(view_data(_softmax_mlp()))
    broken = tmp_path / "broken.html"
    broken.write_text(page.replace("JSON.parse(", "JSON.parsed("))
    body = browser.body_attributes(browser.dump_dom(str(broken)))
    assert "data-rendered" not in body and "parsed" in body.get("data-errors", ""), body
    good = write_html(str(tmp_path / "good.html"), view_data(_softmax_mlp()))
    assert browser.body_attributes(browser.dump_dom(good)).get("data-rendered") == "yes"

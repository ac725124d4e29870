"""compile as a list of named passes: timing (GRAPHC_LOG), dumps, and verify after each."""
import os
from dataclasses import replace

import pytest

import graphc
from graphc import compiler
from graphc.ir.graph import Graph
from graphc.ir.types import TensorType
from graphc.ir.verify import verify

PASS_NAMES = ["trace", "simplify", "fuse", "plan", "backend"]


def _graph() -> Graph:
    return graphc.trace(lambda x, y: graphc.tanh(x) * y + 1.0, graphc.tensor((4,)),
                        graphc.tensor((4,)))


def _with_node(graph: Graph, pos: int, **changes) -> Graph:
    nodes = list(graph.nodes)
    nodes[pos] = replace(nodes[pos], **changes)
    return Graph(nodes, list(graph.inputs), list(graph.outputs), graph.name,
                 graph.single_output, dict(graph.aliases))


def test_compile_runs_the_passes_in_order():
    assert [p.name for p in compiler.PASSES] == PASS_NAMES


def test_graphc_log_passes_prints_each_pass_time_and_size(monkeypatch, capsys):
    monkeypatch.setenv("GRAPHC_LOG", "passes")
    graphc.compile(lambda x: graphc.exp(x) * 2.0, graphc.tensor((5,)))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("graphc:")]
    assert [line.split()[2] for line in lines] == PASS_NAMES
    for line in lines:
        assert " ms " in line and "nodes" in line, line
    assert "1 kernels" in lines[-1]


def test_no_log_without_graphc_log(monkeypatch, capsys):
    monkeypatch.delenv("GRAPHC_LOG", raising=False)
    graphc.compile(lambda x: graphc.exp(x) * 3.0, graphc.tensor((5,)))
    assert "graphc: pass" not in capsys.readouterr().err


def test_graphc_dump_writes_each_pass_result(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHC_DUMP", str(tmp_path))

    def model(x):
        return graphc.tanh(x) + 1.0
    graphc.compile(model, graphc.tensor((3,)))
    names = sorted(os.listdir(tmp_path))
    assert names == [f"model.{n}-{p}.txt" for n, p in enumerate(PASS_NAMES)]
    assert "tanh" in (tmp_path / "model.1-simplify.txt").read_text()
    assert "k0_" in (tmp_path / "model.2-fuse.txt").read_text()


def test_verify_names_the_pass_that_broke_the_graph(monkeypatch):
    simplify = compiler.simplify

    def broken_simplify(graph):   # a pass that forgets to re-infer a type
        graph = simplify(graph)
        last = graph.outputs[0]
        return _with_node(graph, last, type=TensorType((5,), "float32"))
    monkeypatch.setattr(compiler, "simplify", broken_simplify)
    monkeypatch.setenv("GRAPHC_VERIFY", "1")
    with pytest.raises(graphc.CompileError, match=r"broken after pass simplify: %\d+ add: "
                                                  r"type f32\[5\], but the op infers f32\[4\]"):
        graphc.compile(lambda x, y: graphc.tanh(x) * y + 1.0, graphc.tensor((4,)),
                       graphc.tensor((4,)))


def test_verify_runs_only_when_asked(monkeypatch):
    calls = []
    monkeypatch.setattr("graphc.passes.pipeline.verify", lambda g, where: calls.append(where))
    monkeypatch.setenv("GRAPHC_VERIFY", "0")
    graphc.compile(lambda x: x * 5.0, graphc.tensor((2,)))
    assert calls == []
    monkeypatch.setenv("GRAPHC_VERIFY", "1")
    graphc.compile(lambda x: x * 6.0, graphc.tensor((2,)))
    assert calls == [f"after pass {p}" for p in PASS_NAMES]


def test_a_broken_graph_given_to_compile_is_refused():
    g = _graph()
    bad = _with_node(g, 2, inputs=(5,))
    with pytest.raises(graphc.CompileError, match="broken as given to compile: .*does not precede its user"):
        graphc.compile(bad)


@pytest.mark.parametrize("breakage, message", [
    (lambda g: _with_node(g, 1, id=7), "node %7 sits at position 1"),
    (lambda g: _with_node(g, 2, op="frobnicate"), "unknown op 'frobnicate'"),
    (lambda g: _with_node(g, 2, inputs=(4,)), "input %4 does not precede its user"),
    (lambda g: _with_node(g, 2, inputs=()), "0 inputs, the op takes 1"),
    (lambda g: Graph(g.nodes, g.inputs[:1], g.outputs, g.name),
     "input node.* %1 missing from graph.inputs"),
    (lambda g: Graph(g.nodes, g.inputs + [2], g.outputs, g.name), "%2 is not an input node"),
    (lambda g: Graph(g.nodes, g.inputs, [99], g.name), "output %99 is not a node"),
    (lambda g: Graph(g.nodes, g.inputs, [], g.name), "no outputs"),
    (lambda g: Graph(g.nodes, g.inputs, g.outputs, g.name, aliases={0: 5}),
     "alias output 0 -> input 5 is out of range"),
])
def test_verify_catches_each_broken_invariant(breakage, message):
    g = _graph()
    assert verify(g) is g
    with pytest.raises(graphc.CompileError, match=message):
        verify(breakage(g), "in a test")


def test_verify_raises_even_under_python_O(tmp_path):
    import subprocess
    import sys
    script = ("import graphc\nfrom graphc.ir.verify import verify\n"
              "g = graphc.trace(lambda x: x + 1.0, graphc.tensor((2,)))\n"
              "g.outputs.append(42)\n"
              "try:\n    verify(g)\nexcept graphc.CompileError as e:\n    print('caught', e)\n")
    r = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True,
                       env=dict(os.environ, GRAPHC_CACHE_DIR=str(tmp_path)))
    assert r.returncode == 0 and "caught" in r.stdout and "output %42" in r.stdout, r.stderr


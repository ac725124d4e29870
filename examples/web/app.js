// The browser side of examples/web: loads model/graph.wasm (a graphc wasm32 build), places
// its weights in the module's memory and calls graphc_run, as graphc_runtime.wasm does.
"use strict";

const ALIGN = 64;   // graphc's buffer alignment (graphc_runtime.abi.BUFFER_ALIGN)

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function loadModel(base) {
  const layout = await (await fetch(base + "model.json")).json();
  const wasm = await fetchBytes(base + "graph.wasm");
  // WASI calls the module may import: none are needed to run a graph (each fails, ENOSYS)
  const wasi = new Proxy({}, { get: () => () => 52 });
  const { instance } = await WebAssembly.instantiate(wasm, { wasi_snapshot_preview1: wasi });
  const ex = instance.exports;
  if (ex._initialize) ex._initialize();
  const alloc = (bytes) => {
    const raw = ex.malloc(bytes + ALIGN);
    if (raw === 0) throw new Error(`the module could not allocate ${bytes} bytes`);
    return raw + ((ALIGN - (raw % ALIGN)) % ALIGN);
  };
  const constPtrs = [];
  for (const c of layout.constants) {
    const bytes = await fetchBytes(base + c.file);
    const p = alloc(Math.max(bytes.length, 1));
    new Uint8Array(ex.memory.buffer, p, bytes.length).set(bytes);   // a fresh view: memory grows
    constPtrs.push(p);
  }
  // one batch size at a time: the buffers are reused until a bigger batch comes
  let cap = 0, inPtr = 0, outPtr = 0, wsPtr = 0, table = 0, dims = 0;
  function run(x, batch) {
    if (batch > cap) {
      cap = batch;
      inPtr = alloc(4 * batch * layout.features);
      outPtr = alloc(4 * batch * layout.classes);
      table = alloc(4 * (2 + constPtrs.length));
      dims = alloc(8 * Math.max(layout.symbols.length, 1));
      new BigInt64Array(ex.memory.buffer, dims, 1)[0] = BigInt(batch);
      wsPtr = alloc(Math.max(Number(ex.graphc_workspace_size(dims)), 1));
    }
    new BigInt64Array(ex.memory.buffer, dims, 1)[0] = BigInt(batch);
    new Uint32Array(ex.memory.buffer, table, 2 + constPtrs.length)
      .set([inPtr, ...constPtrs, outPtr]);
    new Float32Array(ex.memory.buffer, inPtr, batch * layout.features).set(x);
    const status = ex.graphc_run(table, wsPtr, dims);
    if (status !== 0) throw new Error(`graphc_run failed with status ${status}`);
    return Float32Array.from(new Float32Array(ex.memory.buffer, outPtr, batch * layout.classes));
  }
  return { run, layout };
}

const argmax = (a) => a.reduce((best, v, i) => (v > a[best] ? i : best), 0);

function drawDigit(pixels) {
  const c = document.createElement("canvas");
  c.width = c.height = 48;
  const g = c.getContext("2d");
  pixels.forEach((v, i) => {
    const shade = Math.round(255 * (1 - v));
    g.fillStyle = `rgb(${shade},${shade},${shade})`;
    g.fillRect((i % 8) * 6, Math.floor(i / 8) * 6, 6, 6);
  });
  return c;
}

async function main() {
  const model = await loadModel("model/");
  const tests = await (await fetch("test_images.json")).json();
  const n = tests.images.length, k = model.layout.classes;
  const probs = model.run(Float32Array.from(tests.images.flat()), n);
  const predictions = [];
  let agree = 0, maxDiff = 0;
  const box = document.getElementById("tests");
  for (let i = 0; i < n; i++) {
    const row = Array.from(probs.subarray(i * k, (i + 1) * k));
    const p = argmax(row);
    predictions.push(p);
    const py = tests.python_probabilities[i];
    if (p === argmax(py)) agree++;
    row.forEach((v, j) => { maxDiff = Math.max(maxDiff, Math.abs(v - py[j])); });
    const cell = document.createElement("div");
    cell.className = "digit" + (p === tests.labels[i] ? "" : " bad");
    cell.appendChild(drawDigit(tests.images[i]));
    cell.appendChild(document.createElement("br"));
    cell.appendChild(document.createTextNode(`${p} (label ${tests.labels[i]})`));
    box.appendChild(cell);
  }
  document.getElementById("summary").textContent =
    `${agree} of ${n} predictions equal the Python runtime's; largest probability difference ` +
    `${maxDiff.toExponential(2)}`;
  document.body.dataset.predictions = JSON.stringify(predictions);
  document.body.dataset.probabilities = JSON.stringify(Array.from(probs));
  document.body.dataset.done = "yes";
  setUpPad(model);
}

function setUpPad(model) {
  const pad = document.getElementById("pad"), g = pad.getContext("2d");
  g.lineWidth = 14; g.lineCap = "round"; g.strokeStyle = "#000";
  let down = false;
  const at = (e) => { const r = pad.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  pad.onpointerdown = (e) => { down = true; g.beginPath(); g.moveTo(...at(e)); };
  pad.onpointermove = (e) => { if (down) { g.lineTo(...at(e)); g.stroke(); } };
  pad.onpointerup = () => { down = false; classify(); };
  document.getElementById("clear").onclick = () => { g.clearRect(0, 0, 160, 160); };
  function classify() {
    const img = g.getImageData(0, 0, 160, 160).data, x = new Float32Array(64);
    for (let i = 0; i < 160 * 160; i++) {   // 20x20 blocks of ink -> 8x8 in [0, 1]
      const cell = Math.floor(Math.floor(i / 160) / 20) * 8 + Math.floor((i % 160) / 20);
      x[cell] += img[4 * i + 3] / 255 / 400;
    }
    const p = model.run(x, 1);
    document.getElementById("drawn").textContent =
      `prediction: ${argmax(p)} (p = ${p[argmax(p)].toFixed(2)})`;
  }
}

main().catch((err) => {
  document.body.dataset.errors = String(err && err.stack || err);
  document.getElementById("summary").textContent = "error: " + err;
});

// The page of --mode=serve (mnist_jax/results/serve.py): a drawing pad whose
// picture (or a dropped photo) is POSTed to /predict after each stroke, and
// one card per run showing its answer.
"use strict";

const pad = document.getElementById("draw");
const ctx = pad.getContext("2d");
const LINE = 20;  // Pen width on the 280-pixel pad: MNIST's 2-3 of 28.
let strokes = [];  // Each a list of [x, y] points on the pad.
let base = null;   // A test digit or photo drawn under the strokes.
let about = {runs: [], digits: [], max_body: 0};
let asked = 0;     // Requests sent; only the latest one's answer is shown.
let pending = 0;   // Requests not answered yet (the body's data-waiting).
let shown = 0;     // Answers drawn (the body's data-answers).

function busy(change) {
  pending += change;
  document.body.dataset.waiting = String(pending);
}

function redraw() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  if (base) {
    const s = Math.min(pad.width / base.width, pad.height / base.height);
    const w = base.width * s, h = base.height * s;
    ctx.drawImage(base, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  }
  ctx.strokeStyle = "#fff";
  ctx.fillStyle = "#fff";
  ctx.lineWidth = LINE;
  ctx.lineCap = ctx.lineJoin = "round";
  for (const points of strokes) line(points);
}

function line(points) {
  if (points.length === 1) {  // A dot.
    ctx.beginPath();
    ctx.arc(points[0][0], points[0][1], LINE / 2, 0, 2 * Math.PI);
    ctx.fill();
    return;
  }
  ctx.beginPath();
  ctx.moveTo(points[0][0], points[0][1]);
  for (const [x, y] of points.slice(1)) ctx.lineTo(x, y);
  ctx.stroke();
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width,
          (event.clientY - box.top) * pad.height / box.height];
}

let drawing = null;
pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  drawing = [point(event)];
  strokes.push(drawing);
  redraw();
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const e of events.length ? events : [event]) drawing.push(point(e));
  redraw();
});
function endStroke() {
  if (!drawing) return;
  drawing = null;
  send();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function show(text) {
  const box = document.getElementById("message");
  box.textContent = text || "";
  box.hidden = !text;
}

function blank() {
  return !base && strokes.length === 0;
}

function send() {
  if (blank()) {
    show("");
    idle();
    document.getElementById("seen").hidden = true;
    return;
  }
  busy(1);
  const since = performance.now();
  // toDataURL encodes now; Chromium's toBlob waits for an idle moment, which
  // after pointer events can be its one-second timeout.
  const png = atob(pad.toDataURL("image/png").split(",")[1]);
  post(new Blob([Uint8Array.from(png, (c) => c.charCodeAt(0))],
                {type: "image/png"}), since);
}

async function post(body, since) {  // After busy(1); since: the stroke's end.
  // Resolves to whether its answer is the one shown (else a message is, or a
  // later stroke's answer).
  const mine = ++asked;
  let answer;
  try {
    const response = await fetch("predict", {method: "POST", body});
    answer = await response.json();
  } catch (error) {
    answer = {error: `no answer from the server (${error.message}); is it still running?`};
  }
  if (mine === asked) {  // Else a later stroke's answer is coming.
    show(answer.error || answer.note);  // A note (no digit here) first.
    if (!answer.error) render(answer, since);
  }
  busy(-1);
  return mine === asked && !answer.error;
}

function colour(pixel) {  // A pixel's channels (0-255): RGB, else grey.
  if (pixel.length >= 3) return pixel.slice(0, 3);
  const v = pixel.reduce((a, b) => a + b, 0) / pixel.length;
  return [v, v, v];
}

function picture(canvas, pixels) {  // pixels: [H][W][C] of 0-255.
  const h = pixels.length, w = pixels[0].length;
  canvas.width = w;
  canvas.height = h;
  const c = canvas.getContext("2d"), data = c.createImageData(w, h);
  pixels.flat().forEach((p, i) => {
    data.data.set([...colour(p), 255], 4 * i);
  });
  c.putImageData(data, 0, 0);
  return canvas;
}

function attribution(canvas, pixels, values) {
  // Red: towards the model's answer; blue: away; over the input, dimmed.
  const h = values.length, w = values[0].length;
  const flat = values.flat(), most = Math.max(1e-9, ...flat.map(Math.abs));
  canvas.width = w;
  canvas.height = h;
  const c = canvas.getContext("2d"), data = c.createImageData(w, h);
  const ink = pixels.flat().map((p) => colour(p).reduce((a, b) => a + b) / 3);
  flat.forEach((v, i) => {
    const a = Math.sqrt(Math.abs(v) / most), g = 0.3 * ink[i];
    const rgb = v > 0 ? [255, 60, 40] : [40, 110, 255];
    data.data.set([g + a * (rgb[0] - g), g + a * (rgb[1] - g), g + a * (rgb[2] - g), 255], 4 * i);
  });
  c.putImageData(data, 0, 0);
  return canvas;
}

function reading(canvas, rows, lines, ink, unit) {
  // The probability of each of `lines` ([class, colour, dash]) after each
  // unit read (unit: [a row, rows]), 1 to n left to right; those before the
  // first ink shaded.
  const n = rows.length, left = 36, bottom = 18, w = 276, h = 120;
  canvas.width = w;
  canvas.height = h;
  const c = canvas.getContext("2d"), plot = h - bottom - 6;
  const x = (r) => left + (w - left - 8) * r / Math.max(1, n - 1);
  const y = (p) => 6 + plot * (1 - p);
  c.fillStyle = "#fff";
  c.fillRect(0, 0, w, h);
  c.fillStyle = "#eef1f4";  // No ink read yet.
  if (ink > 0) c.fillRect(x(0), y(1), x(ink) - x(0), plot);
  c.font = "12px sans-serif";
  c.fillStyle = c.strokeStyle = "#5f6b76";
  c.lineWidth = 1;
  c.textAlign = "right";
  c.textBaseline = "middle";
  for (const p of [0, 0.5, 1]) {
    c.fillText(`${100 * p}%`, left - 4, y(p));
    c.beginPath();
    c.moveTo(left, y(p));
    c.lineTo(w - 8, y(p));
    c.stroke();
  }
  c.textAlign = "center";
  c.textBaseline = "top";
  c.fillText(`${unit[1]} read`, x((n - 1) / 2), y(0) + 4);
  for (const r of [0, n - 1]) c.fillText(`${r + 1}`, Math.min(x(r), w - 24), y(0) + 4);
  c.lineWidth = 2.5;
  for (const [j, colour, dash] of lines) {
    c.strokeStyle = colour;
    c.setLineDash(dash);
    c.beginPath();
    rows.forEach((p, r) => (r ? c.lineTo : c.moveTo).call(c, x(r), y(p[j])));
    c.stroke();
  }
  return canvas;
}

function element(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function card(info, result, pixels, said) {  // said: the input's note, shown first.
  const box = element("article", "card");
  box.dataset.name = info.name;
  box.append(element("h3", "", info.name));
  const tested = info.metrics.length === 0 ? "" : `; ${info.note ? "its last epoch's " : ""}test ` +
      info.metrics.map(([label, value]) => `${label} ${value}`).join(", ");
  box.append(element("div", "about", `${info.title}: ${info.describe}${tested}`));
  if (info.code) box.append(element("div", "about", info.code));
  if (info.note) box.append(element("div", "note", `note: ${info.note}`));
  if (!result) {  // Before the first stroke: which runs are loaded.
    box.append(element("div", "answer", "Draw a digit: its answer shows here."));
    return box;
  }
  if (result.gone) {  // Its run folder was deleted: no answer.
    box.append(element("div", "note", `note: ${result.gone}`));
    return box;
  }
  if (said) box.append(element("div", "note", said));
  const answer = element("div", "answer");
  answer.append(element("span", "top", result.class));
  answer.append(`${(100 * result.probabilities[result.top]).toFixed(1)}%`);
  box.append(answer);
  const maps = element("div", "maps");
  const where = element("figure");
  where.append(attribution(element("canvas", "pixels big"), pixels, result.attribution));
  const key = element("figcaption", "", "where it looks: ");  // As the header's key.
  key.append(element("span", "pos", "red"), " towards, ", element("span", "neg", "blue"), " away");
  where.append(key);
  const bars = element("div", "bars");
  result.probabilities.forEach((p, j) => {
    const bar = element("div", j === result.top ? "bar best" : "bar");
    const track = element("div", "track"), fill = element("div", "fill");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(fill);
    bar.append(element("span", "name", info.classes[j]), track,
               element("span", "value", `${(100 * p).toFixed(1)}%`));
    bars.append(bar);
  });
  maps.append(where, bars);
  box.append(maps);
  if (result.reading) {
    const rows = result.reading, ink = result.first_ink, unit = info.unit;
    let from = rows.length;  // The first unit with ink from which on it answers `top`.
    while (from > Math.max(0, ink) && argmax(rows[from - 1]) === result.top) from--;
    const second = argmax(result.probabilities.map((p, j) => (j === result.top ? -1 : p)));
    const lines = [[result.top, "#d9480f", []], [second, "#1864ab", [5, 3]]];
    const part = element("div", "reading");
    part.append(element("div", "", `As it reads: ${from < rows.length ?
        `${result.class} from ${unit[0]} ${from + 1} of ${rows.length} on` :
        `its last ${unit[0]} decides`}`));
    part.append(reading(element("canvas"), rows, lines, ink, unit));
    const key = element("div", "key");
    key.append(element("span", "top-line", `${info.classes[result.top]}: its answer`),
               element("span", "second-line", `${info.classes[second]}: runner-up`),
               element("span", "", ink > 0 ? "grey: no ink yet" : ""));
    part.append(key);
    box.append(part);
  }
  return box;
}

function idle() {  // A card for each run, with no answer yet.
  document.getElementById("models").replaceChildren(...about.runs.map((info) => card(info)));
}

function argmax(values) {
  return values.indexOf(Math.max(...values));
}

function render(answer, since) {
  picture(document.getElementById("input"), answer.input);
  document.getElementById("seen").hidden = false;
  const byName = Object.fromEntries(about.runs.map((r) => [r.name, r]));
  document.getElementById("models").replaceChildren(
      ...answer.runs.map((r, i) => card(about.runs[i] || byName[r.name], r, answer.input,
                                        answer.note)));
  // From the stroke's end (or the photo's choice) to its answers on the page.
  const ms = performance.now() - since;
  document.body.dataset.ms = ms.toFixed(1);
  document.body.dataset.answers = String(++shown);
  document.getElementById("latency").textContent = `${answer.runs.length} model(s) ` +
      `answered in ${Math.round(ms)} ms (server: ${Math.round(answer.ms)} ms)`;
}

async function useFile(file) {
  // The pad shows a photo once the models answered it: one refused (too big,
  // not an image) leaves the pad and the answers as they were.
  if (!file) return;
  busy(1);
  if (!await post(file, performance.now())) return;
  base = await createImageBitmap(file).catch(() => null);
  strokes = [];
  redraw();
}

document.getElementById("undo").addEventListener("click", () => {
  if (strokes.length) strokes.pop(); else base = null;
  redraw();
  send();
});
document.getElementById("clear").addEventListener("click", () => {
  strokes = [];
  base = null;
  redraw();
  send();
});
document.getElementById("photo").addEventListener("change", (event) => {
  useFile(event.target.files[0]);
  event.target.value = "";
});
document.addEventListener("dragover", (event) => {
  event.preventDefault();
  pad.classList.add("dropping");
});
document.addEventListener("dragleave", () => pad.classList.remove("dropping"));
document.addEventListener("drop", (event) => {
  event.preventDefault();
  pad.classList.remove("dropping");
  useFile(event.dataTransfer.files[0]);
});

async function start() {
  busy(0);
  redraw();
  try {
    about = await (await fetch("runs")).json();
  } catch (error) {
    show(`cannot reach the server (${error.message})`);
    return;
  }
  idle();
  const list = document.getElementById("digit-list");
  for (const digit of about.digits) {
    const [h, w, c] = digit.shape, rows = [];
    for (let r = 0; r < h; r++) {
      const row = [];
      for (let k = 0; k < w; k++) row.push(digit.pixels.slice((r * w + k) * c, (r * w + k + 1) * c));
      rows.push(row);
    }
    const thumb = picture(element("canvas", "pixels"), rows);
    thumb.title = `test digit: ${digit.label}`;
    thumb.dataset.label = digit.label;
    thumb.addEventListener("click", () => {
      strokes = [];
      base = thumb;
      redraw();
      send();
    });
    list.append(thumb);
  }
  document.getElementById("digits").hidden = about.digits.length === 0;
}

start();

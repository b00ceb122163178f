"""--mode=serve (results/serve.py): every request answered, hostile ones in one
line of JSON; the answers predict and the analyses give; launch.py's command."""

import concurrent.futures
import contextlib
import io
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import jax
import numpy as np
from PIL import Image
import pytest

from conftest import declared_png, dot, drawn_run, seven
from launch_helpers import ROOT, child_env
from mnist_jax import modes
from mnist_jax.data import images
from mnist_jax.errors import UserError
from mnist_jax.results import analysis
from mnist_jax.results import run as run_lib
from mnist_jax.results import serve

HUGE = 13000  # A side whose RGBA image is 676 MB decoded.


def _png(picture, kind="PNG"):
  out = io.BytesIO()
  picture.save(out, kind)
  return out.getvalue()


def _seven(size=280, kind="PNG"):
  """A 7 as drawn on the page's pad (white ink on black): the file's bytes."""
  return _png(seven(size, ink=255, paper=0, width=size // 14), kind)


def _model(name, **settings):
  """serve.Model of a seed-preset model with drawn weights, warmed up as
  serve.load warms a run up."""
  model = serve.Model(name, drawn_run(name, **settings))
  model.result(model.start(np.zeros(model.shape)))
  return model


@contextlib.contextmanager
def _serving(loaded):
  """The page's server for `loaded` on a free port, in a thread: it."""
  srv = serve.Server(("127.0.0.1", 0), loaded)
  threading.Thread(target=srv.serve_forever, daemon=True).start()
  try:
    yield srv
  finally:
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def port():
  """The page's server for one linear model: its port."""
  with _serving([_model("linear")]) as srv:
    yield srv.server_address[1]


def _raw(port, data: bytes, read=True, reset=False):
  """(status, headers, body) of the answer to `data` on a fresh connection;
  None where the client leaves at once (`read` false; `reset`: with a reset)."""
  with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
    if reset:
      s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
      s.sendall(data)
    except ConnectionError:  # The server answered and closed first.
      pass
    if not read:
      return None
    s.shutdown(socket.SHUT_WR)
    got = b""
    with contextlib.suppress(ConnectionError):
      while part := s.recv(65536):
        got += part
  head, _, body = got.partition(b"\r\n\r\n")
  lines = head.decode("latin-1").split("\r\n")
  headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
  return int(lines[0].split()[1]), headers, body


def _get(path):
  return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


def _post(body: bytes, length=None, path="/predict") -> bytes:
  """A POST's bytes, with `length` as its Content-Length (default: true)."""
  return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: "
          f"{len(body) if length is None else length}\r\n"
          "Connection: close\r\n\r\n").encode() + body


PAGE_FILES = {p.name: p.read_bytes() for p in sorted(
    pathlib.Path(serve.PAGE).iterdir())}
SEVEN = _seven()
NOISE = np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes()
SIDE = int(serve.MAX_PIXELS ** 0.5)  # The largest taken; transparent: blank.
OTHERS = "this page answers GET of its files and POST /predict"


@pytest.fixture(scope="module")
def requests():
  """(its bytes, the answer's status, what it says): made here, not at import"""
  return [
    *[(_get(f"/{n}"), 200, data) for n, data in PAGE_FILES.items()],
    (_get("/"), 200, PAGE_FILES["index.html"]),
    *[(_get(p), 404, "not part of this page") for p in (
        "/../serve.py", "/page/../serve.py", "/%2e%2e/serve.py",
        "/..%2fserve.py", "//etc/passwd", "/etc/passwd", "/page.js/",
        "/index.html/../../run.py", "/.", "/serve.py", "/page/index.html")],
    (b"GARBAGE\r\n\r\n", 400, OTHERS), (b"GET / HTTP/x\r\n\r\n", 400, OTHERS),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, OTHERS),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431, OTHERS),
    (b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 101 + b"\r\n", 431, OTHERS),
    (b"PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 501, OTHERS),
    (b"DELETE /runs HTTP/1.1\r\n\r\n", 501, OTHERS),
    (b"GET / HTTP/2.0\r\n\r\n", 505, OTHERS),
    (_post(b"x", length="many"), 411, "with its length"),
    (_post(SEVEN, length=-5), 411, "with its length"),
    # Refused by its length, before it is read.
    (_post(b"x" * 999, length=serve.MAX_BODY + 1), 413, "MB, over the"),
    (_post(b""), 400, "empty"), (_post(b"not an image"), 400, "not an image"),
    (_post(SEVEN[:100]), 400, "cannot be read"), (_post(NOISE), 400, ""),
    (_post(_png(Image.new("L", (64, 64), 255))), 400, "no digit"),
    (_post(_png(Image.new("RGBA", (SIDE, SIDE)))), 400, "no digit"),
    (_post(declared_png(HUGE, HUGE)), 400, f"{HUGE}x{HUGE} pixels"),
    (_post(declared_png(2 ** 31 - 1, 2 ** 31 - 1)), 400, "too large"),
    (_post(SEVEN, length=len(SEVEN) + 10)[:-10], 400, "ended after"),
    (_post(SEVEN, length=len(SEVEN) // 2), None, None),  # Lies, sends more.
    (_post(SEVEN, path="/runs"), 404, "takes no uploads"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + NOISE[:200], 400, ""),
    (b"GET / HTTP/1.1\r\n" + NOISE + b"\r\n\r\n", None, None),
    (_post(_png(dot())), 200, images.NO_DIGIT), (_post(SEVEN), 200, None),
    (_post(_seven(1200, "JPEG")), 200, None)]


@pytest.mark.parametrize("at_once", [
    1, pytest.param(50, marks=pytest.mark.slow)])
def test_every_request_is_answered_and_the_server_keeps_serving(
    port, requests, capfd, at_once):
  """Only the page's files are served, other answers one line of JSON saying
  why, an image's always the same; then each twice more, `at_once` at a time,
  every 5th client leaving as it sends: nothing printed, a drawing answered."""
  first = {}

  def one(i):
    request, status, says = requests[i % len(requests)]
    if i >= len(requests) and i % 5 == 4:
      return _raw(port, request, read=False, reset=i % 2 == 0)
    got, headers, body = answer = _raw(port, request)
    assert status is None or got == status, (request[:60], answer)
    if isinstance(says, bytes):
      assert body == says
    elif got != 200:
      assert headers["Content-Type"].startswith("application/json"), answer
      assert body.count(b"\n") == 0 and got >= 400, answer
      assert (says or "") in json.loads(body)["error"], answer
    elif request.startswith(b"POST"):
      a = json.loads(body)
      assert a["note"] == says and len(a["runs"]) == 1, a
      assert first.setdefault(i % len(requests), (a["input"], a["runs"][0][
          "top"])) == (a["input"], a["runs"][0]["top"])

  for i in range(len(requests)):
    one(i)
  with concurrent.futures.ThreadPoolExecutor(at_once) as pool:
    list(pool.map(one, range(len(requests), 3 * len(requests))))
  one(requests.index((_post(SEVEN), 200, None)))
  end = time.monotonic() + 30  # Each of the server's threads done.
  while time.monotonic() < end and any(
      "process_request" in t.name for t in threading.enumerate()):
    time.sleep(0.02)
  assert capfd.readouterr().err == ""


def _peak_mb(fn):
  """MB this process's resident memory peaked above its level at the call."""
  def field(name):
    with open("/proc/self/status") as f:
      return int(next(l for l in f if l.startswith(name + ":")).split()[1])
  idle = field("VmRSS")
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # The high-water mark starts again from here.
  fn()
  return (field("VmHWM") - idle) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                    reason="reads Linux's /proc for the peak memory")
def test_an_image_over_max_pixels_is_never_decoded_whole():
  """A PNG is refused before it is decoded (676 MB); a JPEG decodes at a
  reduced scale (its DCT's), the same 7 as a drawing."""
  def refuse():
    with pytest.raises(images.ImageError, match=f"{HUGE}x{HUGE} pixels"):
      images.load(io.BytesIO(declared_png(HUGE, HUGE)), name="the upload",
                  max_pixels=serve.MAX_PIXELS)
  assert _peak_mb(refuse) < 50
  photo = _seven(5000, "JPEG")  # 25 million pixels.
  wide = _png(Image.new("L", (16000, 1200)), "JPEG")  # A panorama.
  for data, size in ((photo, (2500, 2500)), (wide, (4000, 300))):
    with images.open_image(io.BytesIO(data), "a photo",
                           serve.MAX_PIXELS) as image:
      assert image.size == size
  drafted = images.load(io.BytesIO(photo), name="a photo",
                        max_pixels=serve.MAX_PIXELS)
  small = images.load(io.BytesIO(SEVEN), name="a drawing")
  assert np.abs(drafted.astype(int) - small).mean() < 12


def test_the_page_reaches_for_no_other_host():
  """It works offline: each file it names is served, none reaches elsewhere."""
  named = re.findall(r'(?:src|href)="([^"]*)"',
                     PAGE_FILES["index.html"].decode())
  assert named and all(f"/{n}" in serve.FILES for n in named), named
  for name, data in PAGE_FILES.items():
    assert not re.search(rb"https?:|//[a-z]|@import|url\(", data), name


def test_a_folder_of_runs_is_each_of_them_a_damaged_one_skipped(
    tiny_run, tmp_path, capsys):
  """A run that cannot be loaded is skipped in one line, the others served;
  where none can be, the first's error."""
  runs = tmp_path / "runs"
  for name in ("a", "b", "c"):
    shutil.copytree(tiny_run, runs / name)
  assert serve.run_folders([str(runs), tiny_run]) == [
      *(str(runs / n) for n in "abc"), tiny_run]
  (runs / "b" / "config.json").write_text("{ damaged")
  shutil.rmtree(runs / "c" / "checkpoints")
  assert [m.name for m in serve.load([str(runs)])] == ["a"]
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 2 and all(
      line.startswith(f"warning: skipped {runs / n}, serving the others: ")
      for line, n in zip(lines, "bc")), lines
  shutil.rmtree(runs / "a")
  with pytest.raises(UserError, match="config.json"):  # b's.
    serve.load([str(runs)])


def test_a_run_deleted_while_served_is_noted_and_not_answered(
    tiny_run, tmp_path, capsys):
  """Its card says so from then on, the server once; the others answer."""
  gone, kept = str(tmp_path / "gone"), str(tmp_path / "kept")
  for folder in (gone, kept):
    shutil.copytree(tiny_run, folder)
  with _serving(serve.load([gone, kept])) as page:
    assert all("top" in r for r in page.answer(SEVEN)["runs"])
    shutil.rmtree(gone)
    for _ in range(2):
      first, second = page.answer(SEVEN)["runs"]
      assert first == {"name": "gone", "gone": (
          f"{gone} was deleted: this page no longer answers for it (start "
          "the page again to drop its card)")}
      assert "top" in second
  assert capsys.readouterr().err.count(f"warning: {gone} was deleted") == 1


@pytest.fixture(scope="module")
def analysed_run(tiny_run, prepared, tmp_path_factory):
  """tiny_run with its analyses, whose kept test digits the page offers."""
  folder = str(tmp_path_factory.mktemp("analysed") / "mlp")
  shutil.copytree(tiny_run, folder)
  with contextlib.redirect_stdout(io.StringIO()):
    modes.rewrite_report(folder, analyses=True, mnist_dir=prepared[0],
                         data_dir=prepared[1])
  return folder


def _json(port, request):
  status, headers, data = _raw(port, request)
  assert status == 200 and "json" in headers["Content-Type"], data
  return json.loads(data)


@pytest.mark.slow
def test_each_run_answers_as_predict_and_the_analyses_would(analysed_run,
                                                            tmp_path):
  """/runs: each card's title (settings off its preset), reading unit and the
  analyses' kept digits; /predict: each run's answer, attribution, reading."""
  with _serving(serve.load([analysed_run]) + [_model("rnn", hidden=8)]) as srv:
    port = srv.server_address[1]
    about = _json(port, _get("/runs"))
    answer = _json(port, _post(SEVEN, path="/predict?x=1"))
  assert [(r["name"], r["unit"]) for r in about["runs"]] == [
      ("mlp", None), ("rnn", ["row", "rows"])]
  assert about["runs"][1]["title"] == "rnn (seed, --hidden=8)"
  assert "--mlp_hidden=16" in about["runs"][0]["title"]
  assert "dir=" not in about["runs"][0]["title"]  # Not where files went.
  with np.load(os.path.join(analysed_run, analysis.FOLDER,
                            analysis.ARRAYS)) as a:
    kept, labels = a["images"], a["labels"][a["shown"]]
  assert len(about["digits"]) == min(serve.DIGITS, len(kept))
  for d, image, label in zip(about["digits"], kept, labels):
    assert d["pixels"] == image.ravel().tolist() and d["label"] == str(label)

  path = tmp_path / "seven.png"
  path.write_bytes(SEVEN)
  assert answer["note"] is None, answer
  seen = images.load(str(path))  # --mode=predict's preprocessing.
  np.testing.assert_array_equal(answer["input"], seen)
  assert [r["name"] for r in answer["runs"]] == ["mlp", "rnn"]
  for model, r in zip(srv.loaded, answer["runs"]):
    [predicted] = run_lib.predict_files(model.run, [str(path)])
    np.testing.assert_allclose(r["probabilities"], predicted.probabilities,
                               atol=6e-5)  # Both rounded: one evaluation.
    assert r["top"] == predicted.digit and r["class"] == predicted.name
    ig = analysis.attributions(model.module, model.run.variables,
                               seen[None], [r["top"]])
    if ig["ig_steps"] == analysis.IG_STEPS:  # The analyses' first try.
      np.testing.assert_allclose(r["attribution"], ig["ig"][0, ..., 0],
                                 atol=2e-3)
    # Integrated gradients add up to logit(x) - logit(black).
    assert abs(np.sum(r["attribution"]) - ig["logit_difference"][0]) <= (
        0.05 * abs(ig["logit_difference"][0]) + 1e-2)
    if model.reads:  # Declared, not named: the RNN (its unit above).
      _, _, steps = analysis.forward(model.module, model.run.variables,
                                     seen[None].astype(np.float32),
                                     model.reads.every)
      reading = np.asarray(r["reading"])
      assert reading.shape == (28, 10)
      np.testing.assert_allclose(reading, jax.nn.softmax(steps[0]), atol=2e-3)
    else:
      assert r["reading"] is None


@pytest.mark.slow
def test_launch_serves_prints_the_address_and_stops_on_a_signal_in_one_line(
    tiny_run):
  """Its address, a warning first as it is reachable from the network; SIGTERM
  exits 143 in a line (Ctrl-C's 130: test_launch.py's README commands)."""
  p = subprocess.Popen([sys.executable, "launch.py", "--mode=serve",
                        f"--workdir={tiny_run}", "--host=0.0.0.0"], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, env=child_env())
  try:
    line = p.stdout.readline()
    assert "serving 1 run(s)" in line and "http://0.0.0.0:" in line, (
        line + p.stderr.read())
    port = int(line.split("http://0.0.0.0:")[1].split("/")[0])
    assert _raw(port, _get("/"))[0] == 200
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
  finally:
    if p.poll() is None:
      p.kill()
  assert err.strip().splitlines()[-1] == "stopped serving", err
  assert "reachable from the network" in err, err
  assert p.returncode == 143

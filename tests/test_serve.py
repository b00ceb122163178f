"""--mode=serve (results/serve.py): the page's answers on tiny synthetic runs,
as predict and the analyses compute them; what it refuses; a burst of
requests; launch.py's command, and its Ctrl-C."""

import concurrent.futures
import contextlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
from PIL import Image
from PIL import ImageDraw
import pytest

from launch_helpers import ROOT, child_env
from mnist_jax import models
from mnist_jax import modes
from mnist_jax.data import images
from mnist_jax.errors import UserError
from mnist_jax.results import analysis
from mnist_jax.results import run as run_lib
from mnist_jax.results import serve


def _seven(size=280):
  """A 7 drawn on the page's pad: white ink on black, as a PNG's bytes."""
  pad = Image.new("L", (size, size), 0)
  s = size / 280
  ImageDraw.Draw(pad).line([(60 * s, 60 * s), (220 * s, 60 * s),
                            (120 * s, 240 * s)], fill=255, width=round(20 * s))
  out = io.BytesIO()
  pad.save(out, "PNG")
  return out.getvalue()


def _rnn():
  """A one-layer SimpleRNN of 8 units with drawn weights: a synthetic model
  that reads row by row (as serve.Model wraps a run)."""
  config = models.get_config("rnn", "seed", hidden=8)
  module = models.get("rnn").stock(config)
  variables = jax.device_get(module.init(jax.random.key(0),
                                         np.zeros((1, 28, 28, 1), np.float32)))
  stacked = jax.tree.map(lambda v: np.asarray(v)[None], variables)
  return serve.Model("rnn", run_lib.Run(config, module, variables, 0,
                                        seed_variables=stacked))


@pytest.fixture(scope="module")
def analysed_run(tiny_run, prepared, tmp_path_factory):
  """tiny_run with its analyses, whose kept test digits the page offers."""
  folder = str(tmp_path_factory.mktemp("analysed") / "mlp")
  shutil.copytree(tiny_run, folder)
  with contextlib.redirect_stdout(io.StringIO()):
    modes.rewrite_report(folder, analyses=True, mnist_dir=prepared[0],
                         data_dir=prepared[1])
  return folder


@pytest.fixture(scope="module")
def server(analysed_run):
  """The page's server on a free port for the MLP run folder and a synthetic
  RNN: (server, port)."""
  rnn = _rnn()
  rnn.result(rnn.start(np.zeros(rnn.shape)))  # As serve.load warms up.
  srv = serve.Server(("127.0.0.1", 0), serve.load([analysed_run]) + [rnn])
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  yield srv, srv.server_address[1]
  srv.shutdown()
  srv.server_close()


def _ask(port, method, path, body=None, headers=None):
  """(status, JSON or bytes) of one request on a fresh connection."""
  connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
  try:
    connection.request(method, path, body, headers or {})
    response = connection.getresponse()
    data = response.read()
    kind = response.getheader("Content-Type", "")
    return response.status, json.loads(data) if "json" in kind else data
  finally:
    connection.close()


@pytest.mark.slow
def test_each_run_answers_as_predict_and_the_analyses_would(server, tmp_path,
                                                            analysed_run):
  """/runs: each run's card (its title names the settings it changed from
  its preset, a recurrent run's the unit it reads in) and the test digits
  its analyses kept; /predict: each run's answer, attribution and reading."""
  srv, port = server
  status, about = _ask(port, "GET", "/runs")
  assert status == 200
  assert [(r["name"], r["unit"]) for r in about["runs"]] == [
      ("mlp", None), ("rnn", ["row", "rows"])]
  assert [r["title"] for r in about["runs"]][1] == "rnn (seed, --hidden=8)"
  assert "--mlp_hidden=16" in about["runs"][0]["title"]
  assert "dir=" not in about["runs"][0]["title"]  # Not where files went.
  with np.load(os.path.join(analysed_run, analysis.FOLDER, analysis.ARRAYS)) as a:
    kept, labels = a["images"], a["labels"][a["shown"]]
  assert len(about["digits"]) == min(serve.DIGITS, len(kept))
  for d, image, label in zip(about["digits"], kept, labels):
    assert d["pixels"] == image.ravel().tolist() and d["label"] == str(label)

  path = tmp_path / "seven.png"
  path.write_bytes(_seven())
  status, answer = _ask(port, "POST", "/predict?x=1", _seven())
  assert status == 200 and answer["note"] is None, answer
  seen = images.load(str(path))  # --mode=predict's preprocessing.
  np.testing.assert_array_equal(answer["input"], seen)
  assert [r["name"] for r in answer["runs"]] == ["mlp", "rnn"]
  for model, r in zip(srv.loaded, answer["runs"]):
    [predicted] = run_lib.predict_files(model.run, [str(path)])
    np.testing.assert_allclose(r["probabilities"], predicted.probabilities,
                               atol=6e-5)  # Both rounded: one evaluation.
    assert r["top"] == predicted.digit and r["class"] == predicted.name
    module = models.get(model.run.config.model).stock(model.run.config)
    ig = analysis.attributions(module, model.run.variables,
                               seen[None], [r["top"]])
    if ig["ig_steps"] == analysis.IG_STEPS:  # The analyses' first try.
      np.testing.assert_allclose(r["attribution"], ig["ig"][0, ..., 0],
                                 atol=2e-3)
    # Integrated gradients add up to logit(x) - logit(black).
    assert abs(np.sum(r["attribution"]) - ig["logit_difference"][0]) <= (
        0.05 * abs(ig["logit_difference"][0]) + 1e-2)
    reads = analysis.reading_of(module, model.shape)
    if reads:  # Declared, not named: the RNN.
      _, _, steps = analysis.forward(module, model.run.variables,
                                     seen[None].astype(np.float32), reads.every)
      reading = np.asarray(r["reading"])
      assert reading.shape == (28, 10)
      np.testing.assert_allclose(reading, jax.nn.softmax(steps[0]), atol=2e-3)
      # After the last row it answers what the model answers.
      np.testing.assert_allclose(reading[-1], r["probabilities"], atol=2e-3)
    else:
      assert r["reading"] is None
  assert {r["name"] for r in answer["runs"] if r["reading"]} == {"rnn"}


def _png(picture):
  out = io.BytesIO()
  picture.save(out, "PNG")
  return out.getvalue()


def _dot():
  """A dot on the page's pad."""
  dot = Image.new("L", (280, 280))
  ImageDraw.Draw(dot).ellipse((130, 130, 150, 150), fill=255)
  return _png(dot)


PAGE = os.path.join(os.path.dirname(serve.__file__), "page")


def _file(name):
  with open(os.path.join(PAGE, name), "rb") as f:
    return f.read()


GET_ELSEWHERE = ("/../serve.py", "/page/../serve.py", "/%2e%2e/serve.py",
                 "/..%2fserve.py", "//etc/passwd", "/etc/passwd",
                 "/index.html/../../run.py", "/../../../../etc/passwd",
                 "/page.js/", "/.", "/serve.py", "/page/index.html")


@pytest.mark.slow
@pytest.mark.parametrize("method,path,body,status,says", [
    *[("GET", f"/{n}", None, 200, _file(n)) for n in sorted(os.listdir(PAGE))],
    ("GET", "/", None, 200, _file("index.html")),
    *[("GET", p, None, 404, "not part of this page") for p in GET_ELSEWHERE],
    ("POST", "/predict", b"not an image", 400, "not an image"),
    ("POST", "/predict", b"", 400, "empty"),
    ("POST", "/predict", _png(Image.new("L", (64, 64), 255)), 400, "no digit"),
    ("POST", "/predict", _seven()[:100], 400, "cannot be read"),
    ("POST", "/predict", _dot(), 200, images.NO_DIGIT),
    # A body over the limit is refused by its length, before it is read.
    ("POST", "/predict", serve.MAX_BODY + 1, 413, "MB, over the"),
    ("POST", "/predict", _seven() + bytes(1000), 413, "over the"),  # MAX_BODY=1000.
    ("POST", "/runs", b"x", 404, "takes no uploads"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None)
def test_each_request_gets_its_answer_and_the_server_keeps_serving(
    server, monkeypatch, method, path, body, status, says):
  """Only the page's files are served; each refusal is JSON naming why."""
  _, port = server
  if isinstance(body, int):
    got, answer = _ask(port, method, path, None, {"Content-Length": str(body)})
  else:
    if body and len(body) > 1000 and status == 413:
      monkeypatch.setattr(serve, "MAX_BODY", 1000)
    got, answer = _ask(port, method, path, body)
  assert got == status, answer
  if isinstance(says, bytes):
    assert answer == says
  else:
    assert says in (answer.get("error") or answer.get("note")), answer
  monkeypatch.undo()
  assert _ask(port, "POST", "/predict", _seven())[0] == 200


def test_a_folder_of_runs_is_each_of_them_and_the_page_is_offline(tiny_run,
                                                                  tmp_path):
  """Offline: each file the page names is one the server serves, and no
  script or style reaches for another host."""
  assert serve.run_folders([os.path.dirname(tiny_run), tiny_run]) == [
      tiny_run, tiny_run]
  assert serve.run_folders([str(tmp_path)]) == [str(tmp_path)]
  with pytest.raises(UserError, match="config.json does not exist"):
    serve.load([str(tmp_path)])  # launch.py: one line, exit status 1.
  named = re.findall(r'(?:src|href)="([^"]*)"', _file("index.html").decode())
  assert named and all(f"/{n}" in serve.FILES for n in named), named
  for name in os.listdir(PAGE):
    assert not re.search(rb"https?:|//[a-z]|@import|url\(", _file(name)), name


@pytest.mark.slow
def test_fifty_requests_at_once_are_each_answered(server):
  _, port = server
  first = _ask(port, "POST", "/predict", _seven())[1]
  pictures = [_seven(), _seven(140)]
  with concurrent.futures.ThreadPoolExecutor(50) as pool:
    got = list(pool.map(lambda i: _ask(port, "POST", "/predict",
                                       pictures[i % 2]), range(50)))
  assert [s for s, _ in got] == [200] * 50
  assert all(a["runs"][0]["top"] == first["runs"][0]["top"] and
             a["input"] == first["input"] for _, a in got[::2])


@pytest.mark.slow
@pytest.mark.parametrize("host,signum", [("127.0.0.1", signal.SIGINT),
                                         ("0.0.0.0", signal.SIGTERM)])
def test_launch_serves_prints_the_address_and_stops_on_a_signal_in_one_line(
    tiny_run, host, signum):
  """Ctrl-C exits 130 and SIGTERM 143, as the README's table says; an address
  other than loopback says first that the page is reachable."""
  p = subprocess.Popen([sys.executable, "launch.py", "--mode=serve",
                        f"--workdir={tiny_run}", f"--host={host}"], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, env=child_env())
  try:
    line = p.stdout.readline()
    assert "serving 1 run(s)" in line and f"http://{host}:" in line, (
        line + p.stderr.read())
    port = int(line.split(f"http://{host}:")[1].split("/")[0])
    assert _ask(port, "GET", "/")[0] == 200
    p.send_signal(signum)
    out, err = p.communicate(timeout=30)
  finally:
    if p.poll() is None:
      p.kill()
  lines = err.strip().splitlines()
  assert lines[-1] == "stopped serving", err
  assert len(lines) == 1 + (host != "127.0.0.1"), err
  assert host == "127.0.0.1" or "reachable from the network" in lines[0]
  assert p.returncode == 128 + signum


def test_a_run_deleted_while_served_is_noted_and_not_answered(tiny_run,
                                                                tmp_path,
                                                                capsys):
  """Its card says so from the next answer on, the server says so once, and
  the other runs still answer."""
  gone, kept = str(tmp_path / "gone"), str(tmp_path / "kept")
  for folder in (gone, kept):
    shutil.copytree(tiny_run, folder)
  page = serve.Server(("127.0.0.1", 0), serve.load([gone, kept]))
  try:
    assert all("top" in r for r in page.answer(_seven())["runs"])
    shutil.rmtree(gone)
    for _ in range(2):
      first, second = page.answer(_seven())["runs"]
      assert first == {"name": "gone", "gone": (
          f"{gone} was deleted: this page no longer answers for it (start "
          "the page again to drop its card)")}
      assert "top" in second
  finally:
    page.server_close()
  assert capsys.readouterr().err.count(f"warning: {gone} was deleted") == 1

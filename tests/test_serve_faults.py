"""--mode=serve under faults (results/serve.py): images whose declared size
would take gigabytes, clients that leave early or lie about their length,
malformed requests (one after another, and 50 at once), a damaged run among
healthy ones. Every answer is the page's one-line JSON, nothing is printed
but a line where a line is due, and the server keeps answering."""

import concurrent.futures
import contextlib
import io
import json
import os
import shutil
import socket
import struct
import threading
import time
import zlib

import jax
import numpy as np
from PIL import Image
from PIL import ImageDraw
import pytest

from mnist_jax import models
from mnist_jax.data import images
from mnist_jax.errors import UserError
from mnist_jax.results import run as run_lib
from mnist_jax.results import serve

HUGE = 13000  # A side whose RGBA image is 676 MB decoded.


def _seven(size=280, kind="PNG"):
  """A 7, white ink on black, as the page's pad sends it: the file's bytes."""
  pad = Image.new("L", (size, size), 0)
  s = size / 280
  ImageDraw.Draw(pad).line([(60 * s, 60 * s), (220 * s, 60 * s),
                            (120 * s, 240 * s)], fill=255, width=round(20 * s))
  out = io.BytesIO()
  pad.save(out, kind)
  return out.getvalue()


def _declared(width, height):
  """An RGBA PNG that declares width x height pixels and holds a row of
  them: decoded, it would take 4 * width * height bytes."""
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data)))
  header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
          chunk(b"IDAT", zlib.compress(bytes(9))) + chunk(b"IEND", b""))


def _linear():
  """serve.Model of a linear model with drawn weights (no training)."""
  config = models.get_config("linear", "seed")
  module = models.get("linear").stock(config)
  variables = jax.device_get(module.init(jax.random.key(0),
                                         np.zeros((1, 28, 28, 1), np.float32)))
  stacked = jax.tree.map(lambda v: np.asarray(v)[None], variables)
  model = serve.Model("linear", run_lib.Run(config, module, variables, 0,
                                            seed_variables=stacked))
  model.result(model.start(np.zeros(model.shape)))  # As serve.load warms up.
  return model


@pytest.fixture(scope="module")
def port():
  """The page's server for one linear model, on a free port: its port."""
  srv = serve.Server(("127.0.0.1", 0), [_linear()])
  threading.Thread(target=srv.serve_forever, daemon=True).start()
  yield srv.server_address[1]
  srv.shutdown()
  srv.server_close()


def _handled():
  """Waits until the server's threads have each finished their request."""
  end = time.monotonic() + 30
  while time.monotonic() < end and any(
      "process_request" in t.name for t in threading.enumerate()):
    time.sleep(0.02)


def _raw(port, data: bytes, read=True, reset=False):
  """Sends `data` on a fresh connection; returns (status, headers, body)
  of the answer (None where the client leaves at once: `read` false, or
  `reset` to leave with a reset, not a close)."""
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


def _post(body: bytes, length=None, path="/predict") -> bytes:
  """A POST's bytes, with `length` as its Content-Length (default: true)."""
  return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: "
          f"{len(body) if length is None else length}\r\n"
          "Connection: close\r\n\r\n").encode() + body


def _json_error(answer):
  """The answer's error text, checking it is the page's one-line JSON."""
  status, headers, body = answer
  assert headers.get("Content-Type", "").startswith("application/json"), (
      answer)
  assert body.count(b"\n") == 0 and 400 <= status, answer
  return json.loads(body)["error"]


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
def test_a_huge_image_is_refused_before_it_is_decoded():
  bomb = _declared(HUGE, HUGE)  # 676 MB decoded.

  def refuse():
    with pytest.raises(images.ImageError, match=f"{HUGE}x{HUGE} pixels"):
      images.load(io.BytesIO(bomb), name="the upload",
                  max_pixels=serve.MAX_PIXELS)
  assert _peak_mb(refuse) < 50


def test_a_big_jpeg_is_decoded_at_a_reduced_scale():
  photo = _seven(5000, "JPEG")  # 25 million pixels, over MAX_PIXELS.
  with images.open_image(io.BytesIO(photo), "a photo",
                         serve.MAX_PIXELS) as image:
    assert image.size == (2500, 2500)  # JPEG's DCT, halved as it decodes.
  wide = io.BytesIO()
  Image.new("L", (16000, 1200)).save(wide, "JPEG")  # A panorama.
  with images.open_image(wide, "a panorama", serve.MAX_PIXELS) as image:
    assert image.size == (4000, 300)
  small = images.load(io.BytesIO(_seven()), name="a drawing")
  drafted = images.load(io.BytesIO(photo), name="a photo",
                        max_pixels=serve.MAX_PIXELS)
  assert np.abs(drafted.astype(int) - small).mean() < 12  # The same 7.


@pytest.mark.parametrize("at_once", [
    1, pytest.param(50, marks=pytest.mark.slow)])
def test_every_hostile_request_is_answered_in_the_pages_one_line_json(
    port, capfd, at_once):
  """Malformed requests, bombs, lying lengths, garbage, drawings; every
  fifth client leaves as it sends (a close or a reset: no error). Every
  answer is JSON with its status, nothing is printed, and the server
  answers a drawing after."""
  side = int(serve.MAX_PIXELS ** 0.5)
  seven, flat = _seven(), io.BytesIO()
  # The largest taken, transparent (a pad's export): blank.
  Image.new("RGBA", (side, side)).save(flat, "PNG")
  noise = np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes()
  cases = [
      (b"GARBAGE\r\n\r\n", 400), (b"GET / HTTP/x\r\n\r\n", 400),
      (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
      (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
      (b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 101 + b"\r\n", 431),
      (b"PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 501),
      (b"DELETE /runs HTTP/1.1\r\n\r\n", 501),
      (b"GET / HTTP/2.0\r\n\r\n", 505), (b"GET /nothing HTTP/1.1\r\n\r\n", 404),
      (_post(b"x", length="many"), 411), (_post(seven, length=-5), 411),
      (_post(b"", length=serve.MAX_BODY + 1), 413),
      (_post(b"not an image"), 400), (_post(seven[:200]), 400),
      (_post(noise), 400), (_post(_declared(HUGE, HUGE)), 400),
      (_post(_declared(2 ** 31 - 1, 2 ** 31 - 1)), 400),
      (_post(flat.getvalue()), 400),
      (_post(seven, length=len(seven) + 10)[:-10], 400),  # Lies, stops.
      (_post(seven, length=len(seven) // 2), None),  # Lies, sends more.
      (_post(seven, path="/runs"), 404),
      (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + noise[:200], 400),
      (b"GET / HTTP/1.1\r\n" + noise + b"\r\n\r\n", None),
      (_post(seven), 200), (_post(_seven(1200, "JPEG")), 200)]

  def one(i):
    request, status = cases[i % len(cases)]
    if i % 5 == 4:
      return _raw(port, request, read=False, reset=i % 2 == 0)
    answer = _raw(port, request)
    assert status is None or answer[0] == status, (request[:60], answer)
    if answer[0] != 200:
      text = _json_error(answer)
      if answer[0] in (414, 431, 501, 505):
        assert "POST /predict" in text, text
    elif request.startswith(b"POST"):
      assert json.loads(answer[2])["runs"], answer
  with concurrent.futures.ThreadPoolExecutor(at_once) as pool:
    list(pool.map(one, range(len(cases) * (3 if at_once > 1 else 2))))
  assert "ended after" in _json_error(_raw(port, cases[18][0]))
  assert f"{HUGE}x{HUGE} pixels" in _json_error(_raw(port, cases[15][0]))
  _handled()
  status, _, body = _raw(port, _post(seven))
  assert status == 200 and json.loads(body)["runs"]
  _handled()
  assert capfd.readouterr().err == ""


def test_an_address_other_than_loopback_says_the_page_is_reachable(
    monkeypatch, capsys):
  def stop(self, *args):
    raise KeyboardInterrupt
  monkeypatch.setattr(serve.Server, "serve_forever", stop)
  monkeypatch.setattr(serve, "load", lambda paths, **overrides: [])
  for host, warned in (("127.0.0.1", False), ("0.0.0.0", True)):
    serve.main(["RUN"], host=host)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert "serving 0 run(s)" in out and lines[-1] == "stopped serving"
    assert len(lines) == 1 + warned and (
        not warned or "reachable from the network" in lines[0]), err


def test_a_damaged_run_is_skipped_in_one_line_and_the_others_served(
    tiny_run, tmp_path, capsys):
  runs = tmp_path / "runs"
  for name in ("a", "b", "c"):
    shutil.copytree(tiny_run, runs / name)
  (runs / "b" / "config.json").write_text("{ damaged")
  shutil.rmtree(runs / "c" / "checkpoints")
  loaded = serve.load([str(runs)])
  assert [m.name for m in loaded] == ["a"]
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 2 and all(
      line.startswith(f"warning: skipped {runs / n}") for line, n in zip(
          lines, "bc")), lines
  shutil.rmtree(runs / "a")
  with pytest.raises(UserError, match="config.json"):  # None: the first's.
    serve.load([str(runs)])

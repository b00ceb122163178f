"""`--mode=serve`: a local page to draw a digit on, or drop a photo of one,
that every loaded run reads side by side (as --mode=predict would): its
class probabilities, where it looks (integrated gradients) and, for a model
reading in steps, its answer after each unit; one compiled function per run.

The standard library's ThreadingHTTPServer serves page/'s files (by name,
never joined to a path). Every error is one line of JSON {"error": ...};
images over MAX_PIXELS are refused before they are decoded. A client that
leaves early is no error."""

import concurrent.futures
import ctypes
import functools
import http.server
import io
import ipaddress
import json
import os
import sys
import time
from typing import Callable, Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import models
from mnist_jax.data import datasets
from mnist_jax.data import images as images_lib
from mnist_jax.errors import UserError
from mnist_jax.results import analysis
from mnist_jax.results import run as run_lib
from mnist_jax.rundir import code as code_lib
from mnist_jax.rundir import metrics_log
from mnist_jax.rundir import record
from mnist_jax.training import metrics as metrics_lib
from mnist_jax.training import train

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page")
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# The page's files, by the path a browser asks for: nothing else is served.
FILES = {f"/{n}": n for n in os.listdir(PAGE)
         if os.path.splitext(n)[1] in TYPES}
FILES["/"] = "index.html"
MAX_BODY = 10 * 2 ** 20  # Bytes: a phone's photo fits.
# Pixels decoded at most: a phone's screenshot fits, a photo (JPEG) decodes
# at a reduced scale, a bigger image is refused before it is decoded.
MAX_PIXELS = 4096 ** 2
# A client gone (a stroke's request dropped for the next one): no error.
GONE = (ConnectionError, TimeoutError)
DIGITS = 12  # Test digits offered to start from.


def run_folders(paths: Sequence[str]) -> List[str]:
  """The run folders `paths` name: each one, or the run folders in it."""
  return [f for path in paths for f in (
      [] if record.is_run(path) else record.runs_in(path)) or [path]]


def _answer(module, every: int, apply_fn, variables, x):
  """x [H, W, C] (0-255) -> (logits [K], integrated gradients of the top
  class [H, W] at IG_STEPS fixed nodes, with `every` > 0 the probabilities
  after each unit read [U, K]): the analyses' lenses on one image."""
  logits = train.logits_of(apply_fn, variables, x[None, None])[0, 0]
  nodes, weights = np.polynomial.legendre.leggauss(analysis.IG_STEPS)
  grads, _ = analysis.target_gradients(
      module, variables,
      ((nodes + 1) / 2).astype(np.float32)[:, None, None, None] * x,
      jnp.full(len(nodes), jnp.argmax(logits)))
  ig = x * jnp.tensordot(np.float32(weights / 2), grads, 1)
  return (logits, ig.sum(-1), jax.nn.softmax(analysis.forward(
      module, variables, x[None], every)[2][0]) if every else None)


class Model:
  """One run as the page shows it; `start` then `result` answer an image."""

  def __init__(self, path: str, run, final=None, note=None):
    config, self.path, self.run = run.config, path, run
    self.final = final or {}  # Its final metrics row.
    # A run folder (not a Run made in Python): the page notes its deletion.
    self.folder = record.is_run(path)
    self.name = name = os.path.basename(os.path.normpath(path))
    self.module = models.get(config.model).stock(config)
    self.shape = datasets.get(config.dataset).image_shape
    self.reads = analysis.reading_of(self.module, self.shape)
    self.classes = [str(c) for c in datasets.get(config.dataset).class_names]
    self.variables = jax.device_put(run.variables)
    self.fn = jax.jit(functools.partial(
        _answer, self.module, self.reads.every if self.reads else 0,
        run.apply))
    self.info = {"name": name, "title": run_lib.title(config),
                 "describe": models.get(config.model).describe(config),
                 "unit": self.reads and self.reads.unit,
                 "classes": self.classes,
                 # Its test metrics (metrics.py), each (label, value).
                 "metrics": [(m.label, m.text(final[f"test_{m.name}"]))
                             for m in metrics_lib.of("test")
                             if f"test_{m.name}" in self.final],
                 # "code: ..., edited: ..." where it trained on edited code.
                 "code": code_lib.summary(record.trained_code(path)),
                 "note": note}  # run_lib.run_note, as predict says.

  def start(self, image):
    """Starts the compiled answer for `image` [H, W, C] (jax runs it
    async); returns what `result` takes."""
    image = np.asarray(image, np.float32).reshape(self.shape)
    return image, self.fn(self.variables, jnp.asarray(image))

  def result(self, started) -> Dict[str, object]:
    image, (logits, ig, reading) = started[0], jax.device_get(started[1])
    probs = run_lib.softmax(logits)
    top = int(np.argmax(probs))
    inked = (np.unique(analysis.unit_of_pixel(self.reads, self.shape)[
        image.max(-1) > 0]) if self.reads else np.zeros(0, np.int64))
    return {"name": self.name, "top": top, "class": self.classes[top],
            "probabilities": np.round(probs, 4).tolist(),
            "attribution": np.round(ig, 3).tolist(),
            "reading": None if reading is None else np.round(reading, 3
                                                             ).tolist(),
            # The first unit read with ink in it (-1: none).
            "first_ink": int(inked[0]) if len(inked) else -1}


def load(paths: Sequence[str], **overrides) -> List[Model]:
  """The runs in `paths` (run folders or folders of them), each warmed up on
  a blank image; one that cannot load is skipped in a line (none: the first's
  UserError). overrides: Config fields."""
  loaded, refused = [], []
  for path in run_folders(paths):
    try:
      final = metrics_log.final_metrics(path) or {}
      run = run_lib.load_run(path, **overrides)
      model = Model(path, run, final, run_lib.run_note(path, run))
      if model.info["note"]:  # Said here as predict says it; also on its card.
        print(f"note: {model.info['note']}", file=sys.stderr, flush=True)
    except UserError as e:
      refused.append((path, e))
      continue
    model.result(model.start(np.zeros(model.shape)))
    loaded.append(model)
  if refused and not loaded:
    raise refused[0][1]
  for path, error in refused:
    print(f"warning: skipped {path}, serving the others: {error}",
          file=sys.stderr, flush=True)
  return loaded


def sample_digits(loaded: Sequence[Model]) -> List[dict]:
  """The first DIGITS test digits of the first run whose analyses kept them
  (analysis/arrays.npz, in the run folder): [{label, pixels}]."""
  for m in loaded:
    path = os.path.join(m.path, analysis.FOLDER, analysis.ARRAYS)
    if os.path.isfile(path):
      with np.load(path) as a:
        shown = a["shown"][:DIGITS]
        return [{"label": m.classes[int(y)], "pixels": x.ravel().tolist(),
                 "shape": list(x.shape)} for x, y in zip(
                     np.asarray(a["images"][:DIGITS], np.uint8),
                     a["labels"][shown])]
  return []


def _released(decode):
  """decode(), then the memory it freed given back to the system (glibc's
  malloc_trim; elsewhere nothing): a burst of large uploads leaves the page
  near its idle size, not holding the decodes' peak."""
  try:
    return decode()
  finally:
    MALLOC_TRIM(0)


try:  # glibc's allocator keeps what a thread freed for its next allocation.
  MALLOC_TRIM: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):
  MALLOC_TRIM = lambda _: 0  # Elsewhere: nothing to give back.


class Server(http.server.ThreadingHTTPServer):
  """The page and its answers, for `loaded` runs."""
  daemon_threads = True  # Ctrl-C does not wait for a slow client.
  request_queue_size = 128  # Connections waiting: a burst of 50 all get in.

  def __init__(self, address, loaded: Sequence[Model]):
    self.loaded = list(loaded)
    # Uploads are decoded one at a time, on one thread: the memory a decode
    # takes (a few times MAX_PIXELS x 4 bytes) is taken once, and kept by
    # one thread's malloc arena, not by each of the request threads'.
    self.decoder = concurrent.futures.ThreadPoolExecutor(1, "decode")
    self.gone: Dict[str, str] = {}  # Run folders deleted since: their note.
    self.about = json.dumps({"runs": [m.info for m in loaded],
                             "digits": sample_digits(loaded),
                             "max_body": MAX_BODY}).encode()
    super().__init__(address, Handler)

  def answer(self, body: bytes) -> Dict[str, object]:
    """Every run's answer for one uploaded image (its file's bytes), or
    ImageError; `input`: the image as the models see it."""
    start, notes = time.perf_counter(), list[str]()
    inputs = self.decoder.submit(_released, lambda: {s: images_lib.load(
        io.BytesIO(body), s, "the upload", MAX_PIXELS, notes)
        for s in {m.shape for m in self.loaded}}).result()
    here = [self.present(m) for m in self.loaded]
    started = [m.start(inputs[m.shape]) if ok else None
               for m, ok in zip(self.loaded, here)]
    runs = [m.result(s) if ok else {"name": m.name, "gone": self.gone[m.path]}
            for m, s, ok in zip(self.loaded, started, here)]
    return {"input": inputs[self.loaded[0].shape].tolist(), "runs": runs,
            "note": notes[0] if notes else None,  # images.NO_DIGIT.
            "ms": round(1000 * (time.perf_counter() - start), 1)}

  def present(self, model: "Model") -> bool:
    """Whether `model`'s run folder is still there; the first time it is
    not, says so in a line (`gone`: the note its card shows from then on)."""
    if not model.folder or record.is_run(model.path):
      return True
    if model.path not in self.gone:
      self.gone[model.path] = (f"{model.path} was deleted: this page no "
                               "longer answers for it (start the page again "
                               "to drop its card)")
      print(f"warning: {self.gone[model.path]}", file=sys.stderr, flush=True)
    return False

  def server_close(self):
    super().server_close()
    self.decoder.shutdown(wait=False)

  def handle_error(self, request, client_address):
    """A request that failed past its handler's own answers: one line (a
    client gone: none), never the standard library's traceback."""
    error = sys.exc_info()[1]
    if not isinstance(error, GONE):
      print(f"warning: a request from {client_address[0]} failed "
            f"({type(error).__name__}: {error})", file=sys.stderr, flush=True)


class Handler(http.server.BaseHTTPRequestHandler):
  """GET: the page's files and /runs (what is loaded); POST /predict: an
  image's answers. Every error is JSON {"error": ...}."""
  protocol_version = "HTTP/1.1"
  # A malformed request line's answer has a status line and headers too.
  default_request_version = "HTTP/1.0"
  timeout = 60  # Seconds a silent client holds its thread.
  # Headers and body go out as two writes: with Nagle's algorithm the body
  # waits for the client's delayed ACK of the headers (40 ms on Linux).
  disable_nagle_algorithm = True

  def _send(self, status: int, body: bytes, kind="application/json"):
    self.send_response(status)
    self.send_header("Content-Type", f"{kind}; charset=utf-8")
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    self.send_header("X-Content-Type-Options", "nosniff")
    if self.close_connection:
      self.send_header("Connection", "close")
    self.end_headers()
    self.wfile.write(body)

  def _error(self, status: int, text: str):
    self._send(status, json.dumps({"error": text}).encode())

  def send_error(self, code, message=None, explain=None):
    """The standard library's refusals (400, 414, 431, 501, 505) as the
    page's own JSON."""
    self.close_connection = True
    self._error(code, f"{message or self.responses[code][0]} (HTTP {code}); "
                "this page answers GET of its files and POST /predict")

  def do_GET(self):  # pylint: disable=invalid-name
    path = self.path.split("?", 1)[0]
    if path == "/runs":
      return self._send(200, self.server.about)
    name = FILES.get(path)
    if name is None:
      return self._error(404, f"{path} is not part of this page")
    with open(os.path.join(PAGE, name), "rb") as f:
      self._send(200, f.read(), TYPES[os.path.splitext(name)[1]])

  def do_POST(self):  # pylint: disable=invalid-name
    if self.path.split("?", 1)[0] != "/predict":
      self.close_connection = True
      return self._error(404, f"{self.path} takes no uploads; POST /predict")
    try:
      length = int(self.headers.get("Content-Length", ""))
    except ValueError:
      length = -1
    if not 0 <= length <= MAX_BODY:
      self.close_connection = True
      self._error(413 if length > 0 else 411, (
          f"the image is {length / 2 ** 20:.1f} MB, over the "
          f"{MAX_BODY // 2 ** 20} MB this page takes; send a smaller one")
                  if length > 0 else "send the image with its length "
                  "(Content-Length)")
      self.connection.settimeout(5)  # Then the body, read and dropped, so
      try:  # the browser sees the answer, not a reset connection.
        while length > 0 and (part := self.rfile.read(min(length, 2 ** 16))):
          length -= len(part)
      except OSError:
        pass
      return None
    body = self.rfile.read(length)
    if len(body) < length:  # The client stopped sending: it may be gone.
      self.close_connection = True
      return self._error(400, f"the upload ended after {len(body)} of its "
                         f"{length} bytes (Content-Length); send it again")
    try:
      if not body:
        raise images_lib.ImageError("the upload is empty; draw a digit or "
                                    "drop a photo of one")
      answer = json.dumps(self.server.answer(body)).encode()
    except images_lib.ImageError as e:
      return self._error(400, str(e))
    except Exception as e:  # pylint: disable=broad-except
      return self._error(500, f"the upload could not be read "
                         f"({type(e).__name__}: {e}); try another image")
    return self._send(200, answer)

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    """Quiet: the page shows each answer, errors included."""


def main(paths: Sequence[str], host: str = "127.0.0.1", port: int = 0,
         out=None, **overrides) -> None:
  """`--mode=serve`: loads and warms up the runs, prints the page's address
  (and a warning where --host is not loopback), serves until Ctrl-C or
  SIGTERM (one line). overrides: Config fields."""
  out = out or sys.stdout
  try:
    start = time.perf_counter()
    loaded = load(paths, **overrides)
    try:
      server = Server((host, port), loaded)
    except OSError as e:
      raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); "
                      "pass another --port (0: a free one) or --host") from None
    with server:
      address = f"http://{host}:{server.server_address[1]}/"
      if not ipaddress.ip_address(str(server.server_address[0])).is_loopback:
        print(f"warning: --host={host}: the page is reachable from the "
              f"network, by anyone who can reach port "
              f"{server.server_address[1]} of this machine; --host=127.0.0.1 "
              "keeps it to this machine", file=sys.stderr, flush=True)
      names = ", ".join(m.name for m in loaded)
      print(f"serving {len(loaded)} run(s) ({names}; compiled in "
            f"{time.perf_counter() - start:.1f} s) at {address} "
            "- open it in a browser; Ctrl-C stops", file=out, flush=True)
      server.serve_forever()
  except KeyboardInterrupt:  # launch.py exits 130 (Ctrl-C) or 143 (SIGTERM).
    print("stopped serving", file=sys.stderr, flush=True)

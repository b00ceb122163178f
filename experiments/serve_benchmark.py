"""How long one stroke's answer takes on --mode=serve's page, after warm-up.

  python experiments/serve_benchmark.py                 # the six models
  python experiments/serve_benchmark.py --workdir=RUNS  # run folders instead
  python experiments/serve_benchmark.py --browser       # and in Chromium
  python experiments/serve_benchmark.py --memory        # large uploads at once

Starts the page's server (mnist_jax/results/serve.py) in this process, then
POSTs N strokes' pictures, as the page sends them (a 280x280 PNG, white ink on
black, the digit growing by one stroke a time), one after another, and prints
the median time from sending to the whole answer (HTTP, preprocessing, every
model's forward pass, attribution and reading, JSON) for the first model alone
and for all of them, and the CPU time the process spent on it (on a host that
other work keeps busy the wall time grows, the CPU time much less). With
--browser it then draws N strokes on the page in headless Chromium (as the
browser test does: the browser extra, chromium and chromium-driver) and prints
the median time the page itself measures from a stroke's end to its answers
drawn: the picture encoded, the request, every card drawn. Without
--workdir the models are every registered one at its tuned preset's size
with fresh weights: the time does not depend on what the weights learned.

With --memory it instead sends --uploads large PNGs at once, twice: a
13000x13000 one of under a MB (a decompression bomb) and one of the most
pixels the page decodes (serve.MAX_PIXELS), and prints the peak resident
memory of this process above its idle level while they are answered (Linux's
/proc: its high-water mark, reset first).
"""

import argparse
import concurrent.futures
import http.client
import io
import json
import os
import struct
import sys
import threading
import time
import zlib

import jax
import numpy as np
from PIL import Image
from PIL import ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=wrong-import-position
from mnist_jax import models
from mnist_jax.results import run as run_lib
from mnist_jax.results import serve


def fresh_models():
  """Every registered model at its tuned preset, weights freshly drawn."""
  out = []
  for name in models.MODELS:
    config = models.get_config(name, "tuned")
    module = models.get(name).stock(config)
    variables = jax.device_get(module.init(jax.random.key(0),
                                           np.zeros((1, 28, 28, 1), np.float32)))
    stacked = jax.tree.map(lambda v: np.asarray(v)[None], variables)
    run = run_lib.Run(config, module, variables, 0, seed_variables=stacked)
    out.append(serve.Model(name, run))
    out[-1].result(out[-1].start(np.zeros(out[-1].shape)))  # Warm-up.
  return out


def strokes(n: int, seed: int = 0):
  """n PNGs of a pad being drawn on: each adds a stroke, every 4th starts
  over."""
  rng, pictures, pad = np.random.default_rng(seed), [], None
  for i in range(n):
    if i % 4 == 0:
      pad = Image.new("L", (280, 280), 0)
    points = [tuple(p) for p in rng.uniform(50, 230, (3, 2))]
    ImageDraw.Draw(pad).line(points, fill=255, width=20, joint="curve")
    buffer = io.BytesIO()
    pad.save(buffer, "PNG")
    pictures.append(buffer.getvalue())
  return pictures


def latencies(loaded, pictures, warmup: int = 3):
  """Seconds from each POST to its whole answer, one request at a time."""
  server = serve.Server(("127.0.0.1", 0), loaded)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1])
  times = []
  try:
    for i, body in enumerate(pictures[:warmup] + pictures):
      start = time.perf_counter(), time.process_time()
      connection.request("POST", "/predict", body)
      answer = json.loads(connection.getresponse().read())
      assert len(answer["runs"]) == len(loaded), answer
      if i >= warmup:
        times.append((time.perf_counter() - start[0],
                      time.process_time() - start[1]))
  finally:
    connection.close()
    server.shutdown()
    server.server_close()
  return np.array(times).T


def png(width: int, height: int, ink=()) -> bytes:
  """An RGBA PNG's bytes, transparent but for opaque white `ink` boxes (top,
  bottom, left, right), deflated a row at a time: however large its declared
  size, making it costs a row's memory."""
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data)))
  deflate, parts = zlib.compressobj(9), []
  for y in range(height):
    row = bytearray(4 * width + 1)  # Filter byte 0, then the pixels.
    for top, bottom, left, right in ink:
      if top <= y < bottom:
        row[1 + 4 * left:1 + 4 * right] = b"\xff" * (4 * (right - left))
    parts.append(deflate.compress(row))
  header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
          chunk(b"IDAT", b"".join(parts) + deflate.flush()) +
          chunk(b"IEND", b""))


def _memory(field: str) -> int:
  """This process's /proc/self/status `field` (VmRSS, VmHWM) in bytes."""
  with open("/proc/self/status") as f:
    line = next(l for l in f if l.startswith(field + ":"))
  return int(line.split()[1]) * 1024


def peak_memory(loaded, body: bytes, uploads: int):
  """(MB of resident memory above idle at the peak while `uploads` POSTs of
  `body` are answered at once, and once they are answered; their
  statuses)."""
  server = serve.Server(("127.0.0.1", 0), loaded)
  threading.Thread(target=server.serve_forever, daemon=True).start()

  def post(_):
    connection = http.client.HTTPConnection("127.0.0.1",
                                            server.server_address[1])
    try:
      connection.request("POST", "/predict", body)
      response = connection.getresponse()
      response.read()
      return response.status
    finally:
      connection.close()
  try:
    idle = _memory("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # The high-water mark starts again from here.
    with concurrent.futures.ThreadPoolExecutor(uploads) as pool:
      statuses = list(pool.map(post, range(uploads)))
    return ((_memory("VmHWM") - idle) / 2 ** 20,
            (_memory("VmRSS") - idle) / 2 ** 20, statuses)
  finally:
    server.shutdown()
    server.server_close()


def memory(loaded, uploads: int):
  """Prints the peak memory above idle while `uploads` large PNGs are
  answered at once: a bomb, then the largest the page decodes."""
  side = int(getattr(serve, "MAX_PIXELS", 4096 ** 2) ** 0.5)
  for width, body in (
      (13000, png(13000, 13000)),
      (side, png(side, side, [(side // 5, side // 3, side // 4, side // 2),
                              (side // 5, side * 4 // 5, side // 2,
                               side * 3 // 5)]))):
    mb, after, statuses = peak_memory(loaded, body, uploads)
    counts = ", ".join(f"{statuses.count(s)} x {s}"
                       for s in sorted(set(statuses)))
    print(f"{uploads} uploads at once of a {width}x{width} RGBA PNG "
          f"({len(body) / 2 ** 20:.2f} MB): peak {mb:.0f} MB above idle, "
          f"{after:.0f} MB once answered (answers: {counts})", flush=True)


def browser_test():
  """tests/test_serve_browser.py, whose helpers drive the page, once it
  finds chromium, chromedriver and selenium; else exits in one line saying
  what to install."""
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  try:
    import test_serve_browser  # pylint: disable=g-import-not-at-top
    test_serve_browser.selenium_webdriver()
  except ImportError as e:
    sys.exit(f"--browser: {e.name} is missing; pip install '.[test,browser]'")
  except (test_serve_browser.pytest.skip.Exception,
          test_serve_browser.pytest.fail.Exception) as e:  # What is missing.
    sys.exit(f"--browser: {e}")
  return test_serve_browser


def browser_latencies(browser, loaded, n: int, warmup: int = 3, seed: int = 0):
  """Milliseconds from each of n strokes' end to its answers drawn, as the
  page measures them (its body's data-ms), in headless Chromium."""
  rng, times = np.random.default_rng(seed), []
  server, address = browser.start_server(loaded)
  driver = browser.chromium()
  try:
    driver.get(address)
    for i in range(warmup + n):
      if i % 4 == 0:  # As strokes(): every 4th starts over.
        driver.find_element("id", "clear").click()
      browser.draw(driver, [rng.uniform(-90, 90, (3, 2)).round().tolist()])
      browser.answers(driver, len(loaded), done=i + 1)
      if i >= warmup:
        times.append(float(driver.execute_script(
            "return document.body.dataset.ms")))
  finally:
    driver.quit()
    server.shutdown()
    server.server_close()
  return np.array(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="",
                      help="RUN[,RUN...]: run folders or folders of them "
                      "(default: the registered models, fresh weights)")
  parser.add_argument("--strokes", type=int, default=50)
  parser.add_argument("--browser", action="store_true",
                      help="also time the strokes on the page in Chromium")
  parser.add_argument("--memory", action="store_true",
                      help="instead: the peak memory with large uploads")
  parser.add_argument("--uploads", type=int, default=10,
                      help="with --memory: how many at once")
  args = parser.parse_args()
  browser = browser_test() if args.browser else None
  start = time.perf_counter()
  loaded = (serve.load(args.workdir.split(",")) if args.workdir
            else fresh_models())
  print(f"{len(loaded)} models loaded and compiled in "
        f"{time.perf_counter() - start:.1f} s: "
        f"{', '.join(m.name for m in loaded)}; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}")
  if args.memory:
    return memory(loaded, args.uploads)
  pictures = strokes(args.strokes)
  for count in sorted({1, len(loaded)}):
    wall, cpu = 1000 * latencies(loaded[:count], pictures)
    print(f"{count} model(s): median {np.median(wall):.1f} ms per stroke "
          f"(p90 {np.percentile(wall, 90):.1f} ms, {len(wall)} strokes); "
          f"CPU time {np.median(cpu):.1f} ms (all threads: on a busy host, "
          "what the stroke itself costs)")
    if browser:
      page = browser_latencies(browser, loaded[:count], args.strokes)
      print(f"{count} model(s) on the page: median {np.median(page):.1f} ms "
            f"from a stroke's end to its answers drawn (p90 "
            f"{np.percentile(page, 90):.1f} ms, {len(page)} strokes)")


if __name__ == "__main__":
  main()

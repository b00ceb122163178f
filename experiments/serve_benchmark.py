"""How long one stroke's answer takes on --mode=serve's page, after warm-up.

  python experiments/serve_benchmark.py                 # the six models
  python experiments/serve_benchmark.py --workdir=RUNS  # run folders instead
  python experiments/serve_benchmark.py --browser       # and in Chromium

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
"""

import argparse
import http.client
import io
import json
import os
import sys
import threading
import time

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
  args = parser.parse_args()
  browser = browser_test() if args.browser else None
  start = time.perf_counter()
  loaded = (serve.load(args.workdir.split(",")) if args.workdir
            else fresh_models())
  print(f"{len(loaded)} models loaded and compiled in "
        f"{time.perf_counter() - start:.1f} s: "
        f"{', '.join(m.name for m in loaded)}; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}")
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

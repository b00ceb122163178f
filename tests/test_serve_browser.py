"""--mode=serve's page in headless Chromium (selenium: the "browser" extra): a
drawn 7 and a dropped photo, read by a model of the real MNIST (../shared/mnist;
none of the synthetic digits reads a drawing). Skipped without them; missing
browser parts fail it where MNIST_JAX_BROWSER is set. The README's screenshot:
  python tests/test_serve_browser.py --workdir=RUN,...  # docs/img/serve.png"""

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sys
import threading

import numpy as np
from PIL import Image
from PIL import PngImagePlugin
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable-next=wrong-import-position
from experiments import photo_digits
from mnist_jax.data import images  # pylint: disable=wrong-import-position
from mnist_jax.results import serve  # pylint: disable=wrong-import-position

SHARED_MNIST = os.path.join(ROOT, "..", "shared", "mnist")
# The 7, as pointer moves from the pad's centre (pixels): the bar, then the leg.
SEVEN = ([(-70, -80), (80, -80)], [(80, -80), (40, -10), (0, 60), (-20, 100)])
MOVE_MS = 20  # Each pointer move's time: a stroke of 10-30 moves, as a hand's.


def selenium_webdriver():
  """selenium.webdriver, where chromium and chromedriver are on PATH too."""
  missing = [n for n in ("chromium", "chromedriver") if not shutil.which(n)]
  try:
    from selenium import webdriver  # pylint: disable=g-import-not-at-top
  except ImportError:
    missing.append("selenium (pip install '.[browser]')")
  if missing:
    why = (f"the browser test needs {', '.join(missing)}: apt-get install "
           "chromium chromium-driver; pip install '.[browser]'")
    if os.environ.get("MNIST_JAX_BROWSER"):
      pytest.fail(why)
    pytest.skip(why)
  return webdriver


@contextlib.contextmanager
def opened(loaded):
  """(driver, server): the page's server for `loaded` in a thread, the page
  open in a headless Chromium driven by selenium."""
  webdriver = selenium_webdriver()
  options = webdriver.ChromeOptions()
  options.binary_location = shutil.which("chromium")
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
              "--disable-gpu", "--window-size=1320,760"):
    options.add_argument(arg)
  # pylint: disable-next=g-import-not-at-top
  from selenium.webdriver.chrome.service import Service
  server = serve.Server(("127.0.0.1", 0), loaded)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  driver = webdriver.Chrome(options=options, service=Service(
      executable_path=shutil.which("chromedriver")))
  try:
    driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
    yield driver, server
  finally:
    driver.quit()
    server.shutdown()
    server.server_close()


def wait(driver, timeout=30):
  from selenium.webdriver.support import ui  # pylint: disable=g-import-not-at-top
  return ui.WebDriverWait(driver, timeout)


def answers(driver, count, timeout=60, done=1):
  """{run name: its top answer} once `count` cards show, after the latest
  request is answered (and at least `done` answers were drawn)."""
  wait(driver, timeout).until(lambda d: d.execute_script(
      "return document.body.dataset.waiting === '0' && "
      "Number(document.body.dataset.answers || 0) >= arguments[0]", done
  ) and len(d.find_elements("css selector", ".card")) == count)
  return {card.get_attribute("data-name"): card.find_element(
      "css selector", ".top").text
          for card in driver.find_elements("css selector", ".card")}


def draw(driver, strokes=SEVEN):
  """Draws `strokes` (points from the pad's centre) with pointer events."""
  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.actions import interaction
  from selenium.webdriver.common.actions.action_builder import ActionBuilder
  from selenium.webdriver.common.actions.pointer_input import PointerInput
  pad = driver.find_element("id", "draw")
  for stroke in strokes:
    actions = ActionBuilder(driver, duration=MOVE_MS, mouse=PointerInput(
        interaction.POINTER_MOUSE, "mouse"))
    actions.pointer_action.move_to(pad, *stroke[0]).pointer_down()
    for (x0, y0), (x1, y1) in zip(stroke, stroke[1:]):
      for t in np.linspace(0.1, 1, 10):
        actions.pointer_action.move_to(pad, round(x0 + t * (x1 - x0)),
                                       round(y0 + t * (y1 - y0)))
    actions.pointer_action.pointer_up()
    actions.perform()


def save_page(driver, loaded, out):
  """The whole page as a PNG at `out`, its text chunk "runs" {card name:
  {title, test accuracy}} (test_results.py holds it to the README's table)."""
  height = driver.execute_script("return document.documentElement.scrollHeight")
  driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
      "width": 1320, "height": height, "deviceScaleFactor": 1,
      "mobile": False})
  driver.save_screenshot(out)
  info = PngImagePlugin.PngInfo()
  info.add_text("runs", json.dumps({m.name: {
      "title": m.info["title"], "test_accuracy": m.final.get("test_accuracy")}
                                    for m in loaded}))
  with Image.open(out) as image:
    image.load()
    image.save(out, pnginfo=info)


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
  """A one-epoch MLP (with its analyses' test digits) on the real MNIST."""
  selenium_webdriver()  # No browser: skipped (or failed) before training.
  if not os.path.isdir(SHARED_MNIST):
    pytest.skip(f"the browser test trains on the real MNIST, in {SHARED_MNIST}"
                ", which is not on this machine")
  # pylint: disable=g-import-not-at-top
  from mnist_jax import models
  from mnist_jax import modes
  root = tmp_path_factory.mktemp("browser")
  workdir = str(root / "mlp")
  config = models.get_config("mlp", "tuned", epochs=1, mlp_hidden=(256,),
                             mnist_dir=SHARED_MNIST,
                             data_dir=str(root / "tfds"), workdir=workdir)
  modes.train_and_evaluate(config, workdir, stream=io.StringIO())
  return workdir


@pytest.mark.slow
def test_the_page_reads_a_drawn_seven_and_a_dropped_photo(mnist_run, tmp_path,
                                                          monkeypatch):
  """Cards name their settings and note before a stroke; a dot is no digit;
  a drawn 7 reads 7 (an RNN's reading from its first inked row on), timed;
  a dropped photo reads 7; a bad file or too big a photo gets a message and
  changes nothing; on a phone the cards go under the pad."""
  import test_serve  # pylint: disable=g-import-not-at-top
  from conftest import seven  # pylint: disable=g-import-not-at-top
  rnn = test_serve._model("rnn", hidden=8)  # pylint: disable=protected-access
  loaded = serve.load([mnist_run]) + [rnn]
  loaded[0].info["note"] = "of an older checkpoint"
  card = "return document.querySelector('.card[data-name=\"%s\"]').innerText"
  with opened(loaded) as (driver, _):
    wait(driver).until(  # The cards, with no answer yet.
        lambda d: len(d.find_elements("css selector", ".card")) == 2)
    mlp = driver.execute_script(card % "mlp")
    assert "mlp (tuned, --epochs=1, --mlp_hidden=256)" in mlp, mlp
    assert "note: of an older checkpoint" in mlp and "Draw a digit" in mlp
    draw(driver, [[(0, 0)]])  # A dot.
    answers(driver, 2)
    message = driver.find_element("id", "message")
    assert message.text == images.NO_DIGIT
    note, answer = driver.execute_script(
        "const c = [...document.querySelector('.card[data-name=\"mlp\"]')"
        ".children]; return [c.findIndex((e) => e.textContent === "
        "arguments[0]), c.findIndex((e) => e.classList.contains('answer'))];",
        images.NO_DIGIT)
    assert 0 <= note < answer, (note, answer)
    driver.find_element("id", "clear").click()
    draw(driver)
    assert answers(driver, 2, done=2)["mlp"] == "7"
    assert not message.is_displayed()
    ms = float(driver.execute_script("return document.body.dataset.ms"))
    assert 0 < ms < 60_000  # The page timed its answer.
    ink = driver.execute_script(  # The first row with ink of the input.
        "const c = document.getElementById('input').getContext('2d');"
        "const d = c.getImageData(0, 0, 28, 28).data;"
        "for (let i = 0; i < d.length; i += 4) if (d[i]) return i / 112 | 0;")
    said = driver.execute_script(card % "rnn")
    row = re.search(r"from row (\d+) of 28 on|its last row decides", said)
    assert row and int(row.group(1) or 28) > ink, said
    assert ": its answer" in said and ": runner-up" in said
    assert "where it looks: red towards, blue away" in said
    assert driver.execute_script(  # The reading's key is readable.
        "return parseFloat(getComputedStyle(document.querySelector("
        "'.reading .key')).fontSize)") >= 11
    out = str(tmp_path / "serve.png")
    save_page(driver, loaded, out)
    with Image.open(out) as shot:
      assert shot.size[0] >= 1000 and set(json.loads(shot.text["runs"])) == {
          "mlp", "rnn"}

    photo, text = tmp_path / "seven.jpg", tmp_path / "notes.png"
    photo.write_bytes(photo_digits.photo_jpeg(  # A phone's photo of a 7.
        np.asarray(seven(28, ink=255, paper=0, width=3)),
        np.random.default_rng(0)))
    text.write_text("not a picture")
    driver.execute_script(  # Dropped on the pad: a drop event with the file.
        "const input = document.createElement('input');"
        "input.type = 'file'; input.id = 'dropped';"
        "document.body.append(input);")
    driver.find_element("id", "dropped").send_keys(str(photo))
    driver.execute_script(
        "const data = new DataTransfer();"
        "data.items.add(document.getElementById('dropped').files[0]);"
        "document.getElementById('draw').dispatchEvent(new DragEvent('drop', "
        "{dataTransfer: data, bubbles: true, cancelable: true}));")
    read = answers(driver, 2, done=3)
    assert read["mlp"] == "7"
    pad = "return document.getElementById('draw').toDataURL()"
    shown = driver.execute_script(pad)  # The photo, on the pad.
    monkeypatch.setattr(serve, "MAX_BODY", os.path.getsize(photo) - 1)
    for upload, words in ((str(text), "not an image"), (str(photo), "over the")):
      driver.find_element("id", "photo").send_keys(upload)  # The file input.
      wait(driver).until(lambda _, w=words: w in message.text)
      assert answers(driver, 2) == read  # The last answer stays,
      assert driver.execute_script(pad) == shown  # and the pad with it.
    driver.set_window_size(400, 800)  # A phone: the cards go under the pad.
    assert driver.execute_script("const e = document.documentElement; "
                                 "return e.scrollWidth <= e.clientWidth")


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="Takes the README's screenshot "
                                   "of --mode=serve's page: a 7 drawn")
  parser.add_argument("--workdir", required=True, help="RUN[,RUN...]")
  parser.add_argument("--out", default=os.path.join(ROOT, "docs", "img",
                                                    "serve.png"))
  args = parser.parse_args()
  with opened(serve.load(args.workdir.split(","))) as (page, srv):
    draw(page)  # The README's screenshot: the 7 drawn.
    print(f"{answers(page, len(srv.loaded))} -> {args.out}")
    save_page(page, srv.loaded, args.out)

"""No input ends in a traceback: every numeric flag at absurd values and any
bytes as an IDX file (a checkpoint's: test_checkpoint.py) give one line or,
valid after all, their result."""

import gzip
import os
import re
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from conftest import write_idx
import launch_helpers as lh
from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.data import idx
from mnist_jax.errors import BadFlag

VALUES = ("nan", "inf", "-inf", "-1", "0", "1e30", str(2**63))
# Every numeric setting: Config's fields and the models' own.
NUMERIC = [n for n, declared in config_lib.SETTINGS.items()
           if type(declared.default) in (int, float, tuple)]


def test_every_numeric_setting_declares_bounds_its_default_is_inside():
  """A numeric field added without a bounded parser fails here, not in a
  user's run."""
  for name, declared in config_lib.FIELDS.items():
    if type(declared.default) in (int, float):
      assert declared.parser.upper_bound is not None, name
      assert config_lib.parse(name, declared.default) == declared.default
  config_lib.validate(config_lib.Config())


def _model(name):
  """The first model that has setting `name`."""
  return "mlp" if name in config_lib.FIELDS else models.models_with(name)[0]


@pytest.mark.slow
def test_every_numeric_flag_at_absurd_values_is_one_line_or_valid(tmp_path):
  """Each value is refused in one line, exit 2, by the flag's parser, and
  get_config and Config.replace refuse it in the same words; or it is in
  the bounds and the command runs (exit 0). No run folder is made."""
  cases = [(name, value) for name in NUMERIC for value in VALUES]
  results = lh.in_one_process({  # --dry_run: every check a run makes first.
      str(i): [f"--model={_model(n)}", f"--{n}={v}", "--dry_run",
               f"--workdir={tmp_path}/{i}"] for i, (n, v) in enumerate(cases)})
  refused = 0
  for i, (name, value) in enumerate(cases):
    result = results[str(i)]
    case, lines = f"--{name}={value}", result["err"].splitlines()
    assert not result["crash"] and "Traceback" not in result["err"], result
    try:
      config_lib.SETTINGS[name].reader().parse(value)
    except ValueError:
      with pytest.raises(BadFlag) as caught:
        models.get_config(_model(name), **{name: value})
      assert result["code"] == 2 and lines == [
          f"error: {caught.value}; see python launch.py --help"], (case, result)
      assert str(caught.value).startswith(f"flag {case}: ")
      refused += 1
      try:  # A Config field, given in Python: refused alike.
        number = type(config_lib.FIELDS[name].default)(value)
      except (KeyError, ValueError):  # A model's, or "nan" as an int.
        continue
      for refuse in (config_lib.Config().replace, lambda **kw: (
          config_lib.validate(config_lib.Config(**kw)))):
        with pytest.raises(BadFlag, match=re.escape(f"flag --{name}={number}:")):
          refuse(**{name: number})
    else:
      assert result["code"] == 0 and not lines, (case, result)
  assert os.listdir(tmp_path) == []
  assert refused > len(cases) - refused


def _damage(path, kind, draw):
  """Replaces the valid IDX file at `path` by random bytes, itself cut short,
  or itself with a changed header byte; maybe gzipped. Returns which."""
  with open(path, "rb") as f:
    raw = f.read()
  how = draw(st.sampled_from(["random", "cut", "header"]))
  if how == "random":
    raw = draw(st.binary(max_size=3000))
  elif how == "cut":
    raw = raw[:draw(st.integers(0, len(raw) - 1))]
  else:
    pos = draw(st.integers(0, (16 if kind == "images" else 8) - 1))
    raw = raw[:pos] + bytes([raw[pos] ^ draw(st.integers(1, 255))]) + (
        raw[pos + 1:])
  with open(path, "wb") as f:
    f.write(gzip.compress(raw) if draw(st.booleans()) else raw)
  return how


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_bytes_as_an_idx_file_read_or_name_the_file_in_one_line(data):
  kind = data.draw(st.sampled_from(["images", "labels"]))
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "file")
    write_idx(path, np.random.default_rng(0).integers(
        0, 10, (3, 28, 28) if kind == "images" else 3))
    how = _damage(path, kind, data.draw)
    try:
      array = idx.read(path, idx.IMAGES_MAGIC if kind == "images"
                       else idx.LABELS_MAGIC)
    except idx.IdxError as e:
      assert path in str(e) and "\n" not in str(e)
      return
  assert how != "cut", "a file cut short was read"
  assert array.dtype == np.uint8
  assert array.shape[1:] == ((28, 28, 1) if kind == "images" else ())

"""SIGTERM/SIGINT request a stop; a second Ctrl-C quits at once, even inside XLA."""

import os
import signal
import subprocess
import sys
import time

import launch_helpers as lh
from mnist_jax.rundir import control


def test_signal_sets_the_request_and_handlers_are_restored():
  before = signal.getsignal(signal.SIGTERM)
  with control.StopRequest() as stop:
    assert stop.signum is None
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 5
    while stop.signum is None and time.monotonic() < deadline:
      time.sleep(0.01)
    assert stop.signum == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) == before


_SPIN = r"""
import jax, jax.numpy as jnp
from mnist_jax.rundir import control

@jax.jit
def spin(x):
  inner = lambda _, v: jax.lax.fori_loop(0, 1_000_000_000,
                                         lambda i, w: w * 0.999 + 1.0, v)
  return jax.lax.fori_loop(0, 1000, inner, x)  # Minutes, in one XLA call.

with control.StopRequest(kept=lambda: ("no checkpoint was saved", "To start it again")) as stop:
  print("ready", flush=True)
  spin(jnp.float32(1.0)).block_until_ready()
  print("finished", stop.signum, flush=True)
"""


def test_second_ctrl_c_quits_during_a_long_xla_call():
  p = subprocess.Popen([sys.executable, "-c", _SPIN], cwd=lh.ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=lh.child_env())
  try:
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert p.poll() is None  # The first Ctrl-C only asks for a stop.
    p.send_signal(signal.SIGINT)
    start = time.monotonic()
    rc = p.wait(timeout=10)
    assert time.monotonic() - start < 5
    err = p.stderr.read()
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()
  assert rc == 130
  assert "SIGINT received: saving a checkpoint" in err
  assert ("second Ctrl-C: quitting now without saving; no checkpoint was "
          "saved") in err  # What the run says it keeps, not a promise.
  assert "Traceback" not in err


def test_message_says_where_the_run_stopped_and_what_was_saved():
  text = control.stopped_message(signal.SIGTERM, 38, 2, 5, 33, "RUN/checkpoints")
  assert text == ("stopped by SIGTERM at step 38 (epoch 2, step 5 of 33); the "
                  "checkpoint is in RUN/checkpoints")
  assert control.stopped_message(signal.SIGINT, 0, 1, 0, 33, None) == (
      "stopped by SIGINT before the first step; nothing to save")

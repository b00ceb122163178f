r"""Cost of pixel-level (784-step) recurrent training on this machine.

For each setting (without and with --remat) prints the compiled train step's
temporary memory (XLA's memory analysis), the median time of a scanned train
step on random data, and the epoch time that implies for 54,000 training
images (MNIST less the 10% validation split). Run it on an otherwise idle
machine:

  python experiments/pixel_rnn.py --model=lstm --steps=5
  # Keep the timings in a runs folder and write docs/performance.md's pixels
  # table from them; --check (no --train) says whether it matches them:
  python experiments/pixel_rnn.py --model=lstm --steps=4 --repeats=3 \
      --train --runs=runs/pixels
"""

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import profile_chunk
from experiments import speedrun
from mnist_jax import models
from mnist_jax.data import pipeline
from mnist_jax.rundir import process
# pylint: enable=g-import-not-at-top,wrong-import-position

MARKER = "<!-- pixel_rnn.py: {} -->"
EPOCH = 54000  # Training images of an epoch: MNIST less the validation split.


def measure(model: str, steps: int, repeats: int, **overrides) -> dict:
  """Compiles the run's own train chunk (profile_chunk.laid_out_chunk: as
  loop.train_and_evaluate lays it out) of `steps` steps on random images and
  times it; prints and returns its row."""
  config = models.get_config(model, "pixels", chunk_steps=steps, **overrides)
  n = steps * config.batch_size
  rng = np.random.default_rng(0)
  split = pipeline.Split(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                         rng.integers(0, 10, n).astype(np.int32))
  chunk, state = profile_chunk.laid_out_chunk(
      config, pipeline.Dataset(split, pipeline.Split(split.images[:0],
                                                     split.labels[:0]),
                               split, tuple("0123456789")),
      say=lambda _: None)
  assert chunk.chunk_len == steps == chunk.steps
  memory = chunk.program.memory_analysis()
  temp_mb = (getattr(memory, "temp_size_in_bytes", 0) / 2**20 if memory
             else float("nan"))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, sums, _ = chunk.train_chunk(state, chunk.epoch_order(state, 1), 1, 0)
    times.append((time.perf_counter() - start) / steps)
  step_s = float(np.median(times))
  epoch_s = step_s * (EPOCH // config.batch_size)
  print(f"{model} {overrides}: temp memory {temp_mb:.0f} MiB, compile "
        f"{chunk.compile_s:.1f}s, {1e3 * step_s:.0f} ms/step (median of "
        f"{repeats} x {steps} steps), epoch of 54k ~ {epoch_s:.0f}s",
        flush=True)
  return {"model": model, "remat": bool(overrides.get("remat")),
          "batch_size": config.batch_size, "steps": steps, "repeats": repeats,
          "step_ms": round(1e3 * step_s, 1), "epoch_s": round(epoch_s),
          "temp_mib": round(temp_mb), "devices": chunk.layout.num_devices,
          "layout": chunk.layout.mode}


def table(rows, host) -> str:
  """The pixels table: a row per setting, from measure's rows."""
  first = rows[0]
  lines = [f"A train step of {first['batch_size']} images on {host['host']}, "
           f"jax {host['jax']}, laid out as launch.py lays it out "
           f"({first['layout']}, {first['devices']} device(s)); medians of "
           f"{first['repeats']} chunks of {first['steps']} steps on random "
           "images.", "",
           f"| command | ms a step | an epoch of {EPOCH:,} images | "
           "temporary memory, each device |", "| --- | ---: | ---: | ---: |"]
  for r in rows:
    flags = f"--model={r['model']} --preset=pixels" + (
        " --remat" if r["remat"] else "")
    lines.append(f"| `python launch.py {flags}` | {r['step_ms']:.0f} | "
                 f"{r['epoch_s']} s | {r['temp_mib']} MiB |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      epilog=__doc__.split("\n\n", 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="lstm")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=128)
  speedrun.add_table_flags(parser, runs_required=False, data=False)
  args = parser.parse_args(argv)
  process.split_host()  # The devices launch.py would make (--parallel=auto).
  process.setup_process()
  measure_all = lambda: [
      measure(args.model, args.steps, args.repeats, remat=remat,
              batch_size=args.batch_size) for remat in (False, True)]
  if not args.runs:
    measure_all()
    return
  rows, host = speedrun.timed(args, "pixels.jsonl", measure_all)
  speedrun.write_table(args.doc, table(rows, host), MARKER, "pixels",
                       args.check)


if __name__ == "__main__":
  main()

r"""Times training of the registered models the same way every time.

  python experiments/benchmark.py --model=cnn,gru --preset=seed --epochs=3 \
      --mnist_dir=DIR --set=impl=stock

Prints a JSON line per model: the train chunk's cold compile time, the median
epoch time after the first, examples/s and GFLOP/s (a step's matmul and
convolution FLOPs x steps x members / epoch time) of a launch.py run's own
loop.train_and_evaluate, with hooks that only keep each epoch's row.
"""

import functools
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
from jax.extend import core
import jax.numpy as jnp
import numpy as np

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.data import augment as augment_lib
from mnist_jax.data import pipeline
from mnist_jax.errors import UserError
from mnist_jax.rundir import process
from mnist_jax.training import members as members_lib
from mnist_jax.training import loop
from mnist_jax.training import population
from mnist_jax.training import train

from experiments.tables import parser, script


def jaxpr_flops(jaxpr) -> float:
  """Matmul and convolution FLOPs (no elementwise) of a jaxpr: a scan's body
  `length` times (XLA's cost analysis: once), a cond's dearest branch."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      k = np.prod([eqn.invars[0].aval.shape[d] for d in lhs_contract])
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * k
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
      per_out = np.prod([rhs[d] for d in spec[1:]])
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * per_out
    subs = [b for v in eqn.params.values()
            for b in (v if isinstance(v, (tuple, list)) else [v])
            if isinstance(b, (core.Jaxpr, core.ClosedJaxpr))]
    if name == "cond":
      total += max(jaxpr_flops(b) for b in eqn.params["branches"])
    elif subs:
      times = eqn.params.get("length", 1) if name == "scan" else 1
      total += times * sum(jaxpr_flops(b) for b in subs)
  return float(total)


class Recorder(loop.Hooks):
  """The loop's hooks: each epoch's row kept (not printed), no files."""

  def start(self, state, run):
    self.rows, self.record = [], run.record()  # Its layout.
    return super().start(state, run)  # And the steps its progress counts.

  def epoch(self, state, row, last):
    self.rows.append(row)


def bench_model(name: str, args) -> dict:
  overrides = {k: getattr(args, k) for k in ("mnist_dir", "data_dir")
               if getattr(args, k) is not None}
  for key, _, value in (item.partition("=") for item in args.set):
    if key not in config_lib.SETTINGS:
      raise UserError(f"--set: unknown Config field {key!r}")
    overrides[key] = config_lib.parse(key, value)  # As its flag reads it.
  config = models.get_config(name, args.preset, epochs=args.epochs,
                             parallel=args.parallel, **overrides)
  num_members = len(members_lib.from_config(config))
  data = pipeline.load(config)
  n = len(data.train)
  steps = population.steps_per_epoch(config, n)
  recorder = Recorder()
  model, implementation = models.build(config, recorder.message,
                                       recorder.message)
  state, final = loop.train_and_evaluate(config, data, model, recorder)
  epoch_times = [r["epoch_time_s"] for r in recorder.rows]
  epoch_time = statistics.median(epoch_times[1:] or epoch_times)
  one = state if num_members == 1 else jax.tree.map(  # Member 0's state.
      lambda x: x[0] if getattr(x, "ndim", 0) else x, state)
  step = functools.partial(  # One member's step, as train_chunk scans it.
      train.train_step, label_smoothing=config.label_smoothing,
      augment=augment_lib.from_config(config))
  flops = jaxpr_flops(jax.make_jaxpr(step)(one, jax.tree.map(  # A batch.
      lambda a: jnp.asarray(a[:config.batch_size]),
      {"image": data.train.images, "label": data.train.labels})))
  layout = recorder.record.get("parallel", {})
  figures = lambda s: float(f"{s:.4g}")  # A millisecond epoch keeps its own.
  return {
      "model": name, "preset": args.preset, "batch_size": config.batch_size,
      "members": num_members, "train_examples": n, "steps_per_epoch": steps,
      "chunk_steps": min(steps, config.chunk_steps),
      "num_params": final["num_params"],
      "compile_time_s": round(final["compile_time_s"], 3),
      "epoch_time_s": figures(epoch_time),
      "epoch_times_s": [figures(x) for x in epoch_times],
      "examples_per_s": round(steps * config.batch_size / epoch_time, 1),
      "step_gflop": round(flops / 1e9, 5),
      "gflops": round(flops * num_members * steps / epoch_time / 1e9, 2),
      "last_epoch_train_accuracy": round(recorder.rows[-1]["train_accuracy"],
                                         4),
      "parallel": layout.get("mode"), "devices": layout.get("devices"),
      "backend": jax.default_backend(), "implementation": implementation,
      "xla_flags": os.environ.get("XLA_FLAGS", "")}


def main(argv=None):
  p = parser(__doc__)
  p.add_argument("--model", default="all",
                 help="a registered model name, a comma-separated list, or all")
  p.add_argument("--preset", default="seed")
  p.add_argument("--epochs", type=int, default=3, help="epochs to time: the "
                 "first is warm-up, the median of the rest is reported")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="override any Config field, e.g. --set=cnn_features=16,32")
  p.add_argument("--parallel", default="auto", help="auto (launch.py's "
                 "default, training/devices.py's rule), none, pmap or sharded")
  args = p.parse_args(argv)
  if args.epochs < 1:
    p.error("--epochs must be at least 1")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = ""  # Cold compiles.
  process.split_host(args.parallel)
  process.setup_process()
  names = list(models.MODELS) if args.model == "all" else args.model.split(",")
  for name in names:
    models.get(name)
  for name in names:
    print(json.dumps(bench_model(name, args)), flush=True)


if __name__ == "__main__":
  script(main)

"""Times training of the registered models the same way every time.

  python experiments/benchmark.py --model=all --preset=seed --epochs=3 \
      --mnist_dir=DIR
  python experiments/benchmark.py --model=cnn --preset=fast --epochs=2 \
      --data_dir=DIR --set=impl=stock

Prints one JSON object per line per model: compile time of the scanned train
chunk, the median epoch time over the epochs after the first, examples/s, the
GFLOP/s achieved (the matmul and convolution FLOPs of one train step, counted
from its jaxpr with scan bodies times their length, times the steps of an
epoch, over the epoch time; XLA's own cost analysis is reported beside it but
counts a loop body once) and that as a fraction of this machine's f32 matmul
peak, measured in the same process with a big matmul.

The epoch loop runs train.py's own chunk (make_train_chunk, create_train_state)
on batches.py's order, placed by devices.py as `launch.py` places it; it waits
for the device once per epoch. The
persistent compilation cache is off unless --compile_cache is given, so
compile_time_s is a cold compile.
"""

import argparse
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
from jax.extend import core
import jax.numpy as jnp
import numpy as np

from mnist_jax import config as config_lib
from mnist_jax import models
from mnist_jax.data import batches as batches_lib
from mnist_jax.data import pipeline
from mnist_jax.errors import UserError
from mnist_jax.training import devices
from mnist_jax.training import members
from mnist_jax.training import train
# pylint: enable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="all",
                 help="a registered model name, a comma-separated list, or all")
  p.add_argument("--preset", default="seed")
  p.add_argument("--epochs", type=int, default=3,
                 help="epochs to time; the first is warm-up, the median of the "
                      "rest is reported")
  p.add_argument("--mnist_dir", default=None)
  p.add_argument("--data_dir", default=None)
  p.add_argument("--batch_size", type=int, default=None)
  p.add_argument("--chunk_steps", type=int, default=None)
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="override any Config field, e.g. --set=cnn_features=16,32")
  p.add_argument("--parallel", default="auto",
                 help="auto (what launch.py does), none, pmap or sharded")
  p.add_argument("--eval", action="store_true",
                 help="also time one evaluation pass over the test split")
  p.add_argument("--compile_cache", action="store_true",
                 help="use the persistent compilation cache (warm compile times)")
  p.add_argument("--peak_size", type=int, default=2048,
                 help="side of the square f32 matmul that measures the peak")
  args = p.parse_args(argv)
  if args.epochs < 1:
    p.error("--epochs must be at least 1")
  return args


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
  """This machine's f32 matmul throughput: the best of `repeats` [n,n]x[n,n]."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  mm(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    mm(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best / 1e9


def jaxpr_flops(jaxpr) -> float:
  """Matmul and convolution FLOPs of a (closed) jaxpr, loops included.

  XLA's cost analysis counts a while loop's body once, which undercounts the
  recurrent models 28x; here scan bodies count `length` times, cond takes
  its dearest branch, and calls are followed. Elementwise work is not counted.
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      k = np.prod([lhs[d] for d in lhs_contract]) if lhs_contract else 1
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * k
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
      per_out = np.prod([rhs[d] for d in spec[1:]])
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * per_out
    subs = [v for v in eqn.params.values()
            if isinstance(v, (core.Jaxpr, core.ClosedJaxpr))]
    for v in eqn.params.values():
      if isinstance(v, (tuple, list)):
        subs += [b for b in v if isinstance(b, (core.Jaxpr, core.ClosedJaxpr))]
    if name == "cond":
      total += max(jaxpr_flops(b) for b in eqn.params["branches"])
    elif subs:
      times = eqn.params.get("length", 1) if name == "scan" else 1
      total += times * sum(jaxpr_flops(b) for b in subs)
  return float(total)


def step_flops(config, state, images, labels):
  """(jaxpr matmul+conv FLOPs, XLA cost-analysis FLOPs) of one train step."""
  step = functools.partial(
      train.train_step, view=models.input_view(config),
      label_smoothing=config.label_smoothing)
  batch = (images[:config.batch_size], labels[:config.batch_size])
  counted = jaxpr_flops(jax.make_jaxpr(step)(state, *batch))
  cost = jax.jit(step).lower(state, *batch).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return counted, float((cost or {}).get("flops", float("nan")))


def _parse_sets(items) -> dict:
  """--set FIELD=VALUE strings -> typed Config overrides."""
  out = {}
  for item in items:
    key, _, value = item.partition("=")
    if key not in config_lib.flag_names():
      raise UserError(f"--set: unknown Config field {key!r}")
    kind = config_lib.field_type(key)
    if kind is tuple:
      out[key] = tuple(int(v) for v in value.split(","))
    elif kind is bool:
      out[key] = value.lower() in ("1", "true", "yes")
    else:
      out[key] = kind(value)
  return out


def bench_model(name: str, args, peak: float) -> dict:
  overrides = {k: getattr(args, k) for k in ("mnist_dir", "data_dir", "batch_size",
                                             "chunk_steps")
               if getattr(args, k) is not None}
  overrides.update(_parse_sets(args.set))
  config = models.get_config(name, args.preset, epochs=args.epochs,
                             parallel=args.parallel, **overrides)
  par = devices.setup(config)
  dataset = pipeline.load(config)
  n = len(dataset.train)
  host_images, host_labels = dataset.train.images, dataset.train.labels
  steps = n // config.batch_size
  if steps < 1:
    raise SystemExit(f"error: --batch_size={config.batch_size} is larger than the "
                     f"{n} training examples")

  init_rng, data_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  model = models.build(config)
  choice = None
  if devices.auto_layouts(config):  # A split CPU host: as launch.py chooses.
    engine = devices.Engine(config, members.from_config(config))
    train.layout_for(engine, config, model, dataset, steps)
    par, choice = engine.par, engine.environment().get("parallel_choice")
  state = train.create_train_state(init_rng, config, model, steps)
  num_params = int(sum(p.size for p in jax.tree.leaves(state.params)))
  flops, xla_flops = step_flops(config, state, jnp.asarray(host_images[:512]),
                                jnp.asarray(host_labels[:512]))
  state = par.replicate(state)
  images, labels = par.replicate(host_images), par.replicate(host_labels)

  num_chunks, chunk_len = batches_lib.chunk_plan(steps, config.chunk_steps)
  valid = par.replicate_chunks((np.arange(num_chunks * chunk_len) < steps)
                               .reshape(num_chunks, chunk_len))

  def plan(epoch):
    return par.shard_chunks(batches_lib.epoch_plan(
        data_rng, epoch, n=n, batch_size=config.batch_size,
        num_chunks=num_chunks, chunk_len=chunk_len))

  t = time.perf_counter()
  chunk_fn = par.compile_train(
      train.make_train_chunk(config, par.axis_name, jit=False), state, images,
      labels, plan(1)[0], valid[0])
  compile_time = time.perf_counter() - t

  epoch_times = []
  for epoch in range(1, args.epochs + 1):
    batches = jax.block_until_ready(plan(epoch))
    t = time.perf_counter()
    for c in range(num_chunks):
      state, sums, _, _ = chunk_fn(state, images, labels, batches[c], valid[c])
    jax.block_until_ready((state, sums))
    epoch_times.append(time.perf_counter() - t)
  timed = epoch_times[1:] or epoch_times
  epoch_time = statistics.median(timed)
  gflops = flops * steps / epoch_time / 1e9
  final = members.host_metrics(sums)
  row = {
      "model": name, "preset": args.preset, "batch_size": config.batch_size,
      "train_examples": n, "steps_per_epoch": steps,
      "chunks_per_epoch": num_chunks, "num_params": num_params,
      "compile_time_s": round(compile_time, 3),
      "epoch_time_s": round(epoch_time, 4),
      "epoch_times_s": [round(x, 4) for x in epoch_times],
      "examples_per_s": round(steps * config.batch_size / epoch_time, 1),
      "step_gflop": round(flops / 1e9, 5),
      "xla_cost_analysis_step_gflop": round(xla_flops / 1e9, 5),
      "gflops": round(gflops, 2),
      "peak_gflops": round(peak, 1),
      "fraction_of_peak": round(gflops / peak, 4),
      "last_chunk_train_accuracy": round(final["accuracy"], 4),
      "backend": jax.default_backend(),
      "parallel": par.mode, "devices": par.num_devices,
      "parallel_choice": choice,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  if args.eval:
    evaluate = par.wrap_evaluate(
        train.make_evaluate(config, state.apply_fn, jit=False))
    test = dataset.test
    batch_idx, mask = batches_lib.eval_batches(
        len(test), config.eval_batch_size, par.num_devices)
    eval_args = (par.replicate(test.images), par.replicate(test.labels),
                 par.shard(batch_idx), par.shard(mask))
    t = time.perf_counter()
    jax.block_until_ready(evaluate(state.params, *eval_args))
    row["eval_compile_and_run_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    metrics = members.host_metrics(evaluate(state.params, *eval_args))
    row["eval_time_s"] = round(time.perf_counter() - t, 4)
    row["test_accuracy"] = round(metrics["accuracy"], 4)
  return row


def main(argv=None):
  args = parse_args(argv)
  if not args.compile_cache:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = ""
  devices.split_host(args.parallel)
  devices.setup_process()
  names = list(models.MODELS) if args.model == "all" else args.model.split(",")
  try:
    for name in names:
      models.get(name)
    peak = matmul_peak_gflops(args.peak_size)
    for name in names:
      print(json.dumps(bench_model(name, args, peak)), flush=True)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  main()

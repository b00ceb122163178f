"""What is bit for bit across layouts, device counts and members: one epoch.

Trains each row's command once per layout and device count (`--parallel=none`,
`sharded` and `pmap` on hosts forced to N devices with XLA_FLAGS, and as
member 0 of `--num_seeds=2`) and writes docs/performance.md's parity table:
each cell is the difference in final test loss (and test accuracy, in points,
where it moved) from the row's run on a host of one device; `=` where the test
and train losses are the same to the last bit. A pmap cell is marked with a
dagger where the run draws dropout, augmentation or BatchNorm statistics per
device (another run, not a rounding). Then two runs of the fast CNN preset,
on one device and sharded over 2, give the sentence on longer runs.

  python experiments/layout_parity.py --train --runs=runs/parity --mnist_dir=DIR

`--check` says whether the doc matches the kept runs. Every run is a fresh
launch.py process (--noreport): about 90 of them, some minutes on 2 cores.
"""

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import speedrun  # pylint: disable=g-import-not-at-top
from mnist_jax.rundir import metrics_log  # pylint: disable=g-import-not-at-top
from mnist_jax.rundir import record  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "<!-- layout_parity.py: {} -->"
SEED = ["--preset=seed", "--seed=0"]
SMALL_CNN = ["--model=cnn", *SEED, "--cnn_features=8,16", "--cnn_dense=32"]
# (the row's name in the table, its launch.py flags (each run adds
# --epochs=1), all columns or only the single run's layouts).
ROWS = [
    ("linear", ["--model=linear", *SEED], True),
    ("mlp 512-256, dropout 0.2", ["--model=mlp", *SEED], True),
    ("cnn 8-16, dense 32", SMALL_CNN, True),
    ("cnn 8-16, dense 32, `--cnn_batch_norm`",
     SMALL_CNN + ["--cnn_batch_norm"], True),
    ("rnn 32", ["--model=rnn", *SEED, "--hidden=32"], True),
    ("lstm 32", ["--model=lstm", *SEED, "--hidden=32"], True),
    ("gru 32", ["--model=gru", *SEED, "--hidden=32"], True),
    ("mlp (tuned), `--seed=3`", ["--model=mlp", "--preset=tuned", "--seed=3"],
     False),
]
# (column header, [(parallel, devices, members)]): 1 device is an unsplit host.
COLUMNS = [
    ("`none`, {}", [("none", n, 1) for n in (2, 4)]),
    ("`sharded`, {}", [("sharded", n, 1) for n in (2, 4)]),
    ("`pmap`, {}", [("pmap", n, 1) for n in (2, 4)]),
    ("member 0 of `--num_seeds=2`, `none`, {} devices",
     [("none", n, 2) for n in (1, 2, 4)]),
    ("member 0, members split over the devices, {}",
     [("sharded", n, 2) for n in (2, 4)]),
]
FAST = ["--model=cnn", "--preset=fast"]  # The longer runs' command.
# The cells that must be `=` on 2 cores: one device of a host split in 2;
# member 0 on one device, and split over 2.
BIT_FOR_BIT = {("none", 2, 1), ("none", 1, 2), ("none", 2, 2),
               ("sharded", 2, 2)}


def launch(flags, parallel, devices, members, workdir, data_flags) -> dict:
  """One run of launch.py (one device: the host unsplit) -> its member 0's
  test loss and accuracy, last train loss, and whether it drew per-device."""
  env = dict(os.environ)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  env["XLA_FLAGS"] = " ".join(
      [f for f in env.get("XLA_FLAGS", "").split()
       if "xla_force_host_platform_device_count" not in f] +
      ([f"--xla_force_host_platform_device_count={devices}"]
       if devices > 1 else []))
  cmd = [sys.executable, os.path.join(ROOT, "launch.py"), *flags,
         f"--parallel={parallel}", f"--num_seeds={members}",
         f"--workdir={workdir}", "--overwrite", "--noreport", "--noanalyses",
         "--notensorboard", *data_flags]
  done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        check=False)
  if done.returncode:
    raise SystemExit(f"error: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
  rows = metrics_log.read_metrics(
      os.path.join(workdir, metrics_log.METRICS_FILE))
  final = rows[-1]["members"][0] if members > 1 else rows[-1]
  train = rows[-2]["members"][0] if members > 1 else rows[-2]
  config = record.read_config(workdir).to_dict()
  drawn = config.get("augment") or any(
      (k.endswith("dropout") and v) or (k.endswith("batch_norm") and v)
      for k, v in config.items())
  return {"parallel": parallel, "devices": devices, "members": members,
          "test_loss": final["test_loss"], "test_accuracy":
          final["test_accuracy"], "train_loss": train["train_loss"],
          "per_device_draws": bool(drawn)}


def measure(args) -> list:
  """Every wanted row's runs (--rows; the others as kept before)."""
  data_flags = [f"--{k}={v}" for k in ("mnist_dir", "data_dir")
                if (v := getattr(args, k))]
  wanted = args.rows.split(",") if args.rows else None
  counts = [int(n) for n in args.devices.split(",")]
  out = speedrun.kept_timed(args.runs, "parity.jsonl", wanted) if wanted else []
  for index, (_, flags, full) in enumerate(ROWS):
    if wanted and str(index) not in wanted:
      continue
    runs = [("none", 1, 1)] + [c for _, cells in (COLUMNS if full else
                                                  COLUMNS[:3])
                               for c in cells if c[1] in counts + [1]]
    for parallel, devices, members in runs:
      workdir = os.path.join(args.runs, f"row{index}",
                             f"{parallel}-{devices}-{members}")
      out.append({"row": index, **launch(flags + ["--epochs=1"], parallel,
                                         devices, members, workdir,
                                         data_flags)})
      print(json.dumps(out[-1]), flush=True)
  if not wanted or "fast" in wanted:
    for parallel, devices in (("none", 1), ("sharded", 2)):
      workdir = os.path.join(args.runs, f"fast-{parallel}")
      out.append({"row": "fast", **launch(FAST, parallel, devices, 1,
                                          workdir, data_flags)})
      print(json.dumps(out[-1]), flush=True)
  return out


def _sci(x: float, sign: str = "") -> str:
  """x as 2.4e-8 (one decimal, no padded exponent)."""
  mantissa, exponent = f"{x:{sign}.1e}".split("e")
  return f"{mantissa}e{int(exponent)}"


def cell(run: dict, base: dict) -> str:
  """A run's difference from its row's one-device run."""
  if run["test_loss"] == base["test_loss"]:
    return "=" if run["train_loss"] == base["train_loss"] else (
        "0 (train loss moved)")
  text = _sci(run["test_loss"] - base["test_loss"], "+")
  points = 100 * (run["test_accuracy"] - base["test_accuracy"])
  if round(points, 2):
    text += f" ({points:+.2f})"
  return text + (" †" if run["parallel"] == "pmap" and
                 run["per_device_draws"] else "")


def table(runs: list, host: dict) -> str:
  """The parity table, then the sentence its largest differences give."""
  lines = [f"One epoch on MNIST, `--seed=0`, seed presets at small widths on "
           f"{host['host']}, jax {host['jax']}: the difference in final test "
           "loss (and in test accuracy, in points, where it moved) from the "
           "same command with `--parallel=none` on a host of one device; "
           "`=`: the same test and train loss to the last bit. Devices are "
           "forced with `XLA_FLAGS=--xla_force_host_platform_device_count=N`;"
           " 2 members take 2 of 4 devices.", ""]
  kinds = {(r["parallel"], r["devices"], r["members"]) for r in runs}
  columns = [(title, [c for c in cells if c in kinds])
             for title, cells in COLUMNS]
  header = ["model (`--preset=seed`)", "one device: test loss (accuracy)"]
  for title, cells in columns:
    header.append(title.format(" / ".join(str(c[1]) for c in cells)))
  lines += ["| " + " | ".join(header) + " |",
            "| " + " | ".join(["---"] * len(header)) + " |"]
  losses, points = [], []
  for index, (name, _, full) in enumerate(ROWS):
    mine = {(r["parallel"], r["devices"], r["members"]): r
            for r in runs if r["row"] == index}
    if not mine:
      continue
    base = mine[("none", 1, 1)]
    row = [name, f"{base['test_loss']:.6f} "
                 f"({100 * base['test_accuracy']:.2f}%)"]
    for _, cells in (columns if full else columns[:3]):
      found = [mine[c] for c in cells if c in mine]
      row.append(" / ".join(cell(r, base) for r in found))
      for r in found:
        if not (r["parallel"] == "pmap" and r["per_device_draws"]):
          losses.append(abs(r["test_loss"] - base["test_loss"]))
          points.append(abs(100 * (r["test_accuracy"] -
                                   base["test_accuracy"])))
    row += [""] * (len(header) - len(row))
    lines.append("| " + " | ".join(row) + " |")
  moved = round(100 * max(points))
  lines += ["", "Across layouts, device counts, and between a member and its "
            "single run (the cells without †), test losses end up to "
            f"{_sci(max(losses))} apart after one epoch here, " + (
                f"and test accuracies up to {max(points):.2f} points ({moved}"
                " of the 10,000 test images)." if moved else
                "with the same test accuracies.")]
  fast = {r["parallel"]: r for r in runs if r["row"] == "fast"}
  if len(fast) == 2:
    lines[-1] += (
        " Over longer runs the difference grows as training compounds it, as "
        "between any two CPU families, core counts or jax releases: `python "
        "launch.py --model=cnn --preset=fast` (3 epochs, no dropout or "
        f"augmentation) reaches {100 * fast['none']['test_accuracy']:.2f}% "
        f"test accuracy (loss {fast['none']['test_loss']:.5f}) on one device "
        f"and {100 * fast['sharded']['test_accuracy']:.2f}% "
        f"({fast['sharded']['test_loss']:.5f}) with `--parallel=sharded` on "
        "2.")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  speedrun.add_table_flags(p)
  p.add_argument("--rows", default="",
                 help="with --train, only these rows (0-based, or fast: the "
                 "fast preset's runs; comma-separated); the others as kept")
  p.add_argument("--devices", default="2,4",
                 help="with --train, the forced device counts")
  args = p.parse_args(argv)
  runs, host = speedrun.timed(args, "parity.jsonl", lambda: measure(args))
  # The doc says one device of a host split into no more devices than
  # cores, and a member on one or on such devices, are bit for bit the
  # unsplit host's single run.
  moved = [f"{ROWS[r['row']][0]} (--parallel={r['parallel']}, "
           f"devices={r['devices']}, members={r['members']})"
           for r in runs if r["row"] != "fast" and
           (r["parallel"], r["devices"], r["members"]) in BIT_FOR_BIT and
           cell(r, next(b for b in runs if b["row"] == r["row"] and
                        b["devices"] == 1 and b["members"] == 1)) != "="]
  if moved:
    print("error: not bit for bit the unsplit host's single run: "
          f"{'; '.join(moved)}; docs/performance.md says it is; find out why "
          "before writing the table")
    sys.exit(1)
  speedrun.write_table(args.doc, table(runs, host), MARKER, "parity",
                       args.check)


if __name__ == "__main__":
  main()

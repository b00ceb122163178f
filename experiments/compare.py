"""Compares finished runs (or trains them first): tables, plots, analyses.

  # Compare run folders (a folder of run folders works too):
  python experiments/compare.py runs/linear runs/cnn runs/gru --out=comparison
  # Train each model (and seed) first, then compare; finished runs are reused:
  python experiments/compare.py --train=linear,mlp,cnn,rnn,lstm,gru \
      --seeds=0,1,2 --runs_root=runs/compare --out=comparison
  # Train several values of settings a --sweep cannot vary (one run each):
  python experiments/compare.py --train=mlp --vary=mlp_hidden=256/512,256 \
      --vary=dropout=0/0.2 --out=comparison

Writes OUT/comparison.md and OUT/comparison.csv (one row per configuration:
mean and sample standard deviation (n-1, as report.md) over its seeds),
OUT/runs.csv (one row per run and seed), and OUT/accuracy.png,
OUT/accuracy_vs_time.png, OUT/learning_curves.png, and OUT/analysis.md with
OUT/analysis_*.png: what each model learned, side by side (one run folder
per configuration, its chosen member; a folder without analysis/ gets it
written first), with a summary table (parameters, train time, test accuracy,
calibration error before and after temperature scaling, accuracy at 20
degrees and at noise 0.3, rows read to reach 99% of the final accuracy);
--no-analyses skips it. Every member of a
--num_seeds or --sweep run counts as the run of its own configuration and
seed, charged its share of the run's time: the run's times divided by its
members (they trained together, in one program). A model is counted once: a
run folder and a member of another run with the same settings and seed are
one run (the run folder is kept), and comparison.md says which was left out.
Times are a run's wall time less loading its data (the first run on a
machine also prepares the dataset), so the run that happened to come first
is not charged for it. Configurations of one model are ordered by the values
that tell them apart, numbers as numbers.
"""

import argparse
import os
import sys
from typing import List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from mnist_jax.errors import UserError
from mnist_jax.results import compare as compare_lib
# pylint: enable=g-import-not-at-top,wrong-import-position


def main(argv: Optional[Sequence[str]] = None) -> None:
  args = _parser().parse_args(argv)
  paths = list(args.runs)
  if args.train:
    overrides = {k: getattr(args, k) for k in ("epochs", "data_dir", "mnist_dir")
                 if getattr(args, k) is not None}
    paths += compare_lib.train_runs(args.train, args.seeds, args.runs_root,
                                    args.preset,
                                    vary=compare_lib.parse_vary(args.vary),
                                    **overrides)
  elif args.vary:
    raise UserError("--vary needs --train=MODEL: it trains a run per value")
  if not paths:
    raise UserError("pass run folders to compare, or --train=MODEL[,MODEL...]")
  compare_lib.compare(paths, args.out, analyses=args.analyses)


def _names(text: str) -> List[str]:
  return [t.strip() for t in text.split(",") if t.strip()]


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      epilog=__doc__.split("\n\n", 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("runs", nargs="*",
                      help="run folders, or folders of run folders")
  parser.add_argument("--out", default="comparison",
                      help="folder for the table and plots")
  parser.add_argument("--analyses", action=argparse.BooleanOptionalAction,
                      default=True, help="write OUT/analysis.md, the runs' "
                      "analyses side by side (--no-analyses: not)")
  parser.add_argument("--train", type=_names, default=[],
                      help="models to train first (e.g. linear,cnn,gru)")
  parser.add_argument("--seeds", type=lambda t: [int(s) for s in _names(t)],
                      default=[0], help="--train: seeds of each model (0,1,2)")
  parser.add_argument(
      "--vary", action="append", default=[],
      help="--train: a setting to train several values of, NAME=V1/V2/... "
      "(e.g. mlp_hidden=256/512,256); repeat for a grid")
  parser.add_argument("--runs_root", default=os.path.join("runs", "compare"),
                      help="--train: where the run folders go (MODEL-seedN)")
  parser.add_argument("--preset", default="tuned",
                      help="--train: preset of every model")
  parser.add_argument("--epochs", type=int, default=None,
                      help="--train: epochs (default: the preset's)")
  parser.add_argument("--data_dir", default=None, help="--train: tfds data dir")
  parser.add_argument("--mnist_dir", default=None,
                      help="--train: folder with the IDX files")
  return parser


if __name__ == "__main__":
  try:
    main()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)

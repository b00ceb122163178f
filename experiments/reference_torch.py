"""PyTorch timing of the six seed architectures, to set beside experiments/benchmark.py.

  pip install torch   # not a dependency of mnist_jax; this script only
  python experiments/reference_torch.py --model=all --epochs=3 --mnist_dir=DIR

The same networks, optimizers, batch sizes and training-set sizes as the seed
presets (mnist_jax/models/registry.py), trained the way a careful PyTorch user
would: the whole dataset as tensors in memory, one `randperm` per epoch, a slice
per batch, `torch.set_num_threads` = the cores JAX sees. Prints one JSON line
per model with `epoch_time_s`, the median of the epochs after the first, the
same statistic as benchmark.py. Alternate the two scripts on an idle machine.
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build(name, torch, nn):
  """(module, optimizer factory, input view) of one seed preset."""
  class LastState(nn.Module):
    """A recurrent layer over 28 rows of 28 pixels, last state to Dense(10)."""

    def __init__(self, cell):
      super().__init__()
      self.rnn = cell(28, 128, batch_first=True)
      self.out = nn.Linear(128, 10)

    def forward(self, x):
      h, _ = self.rnn(x)
      return self.out(h[:, -1])

  adam = lambda p: torch.optim.Adam(p, lr=1e-3)
  if name == "linear":
    return nn.Linear(784, 10), adam, "flat"
  if name == "mlp":
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(512, 256), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(256, 10)), adam, "flat"
  if name == "cnn":
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64 * 5 * 5, 128), nn.ReLU(), nn.Linear(128, 10)), adam, "image"
  cell = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[name]
  if name == "lstm":  # The seed LSTM notebook used RMSprop.
    return LastState(cell), (lambda p: torch.optim.RMSprop(
        p, lr=1e-3, alpha=0.9, eps=1e-7)), "rows"
  return LastState(cell), adam, "rows"


def time_model(name, images, labels, epochs, threads):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  from mnist_jax import models  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  config = models.get_config(name, "seed")
  n = int(len(labels) * (1 - config.val_fraction))
  model, make_opt, view = _build(name, torch, nn)
  shape = {"flat": (-1, 784), "image": (-1, 1, 28, 28), "rows": (-1, 28, 28)}[view]
  x = torch.from_numpy(images[:n]).float().div_(255).reshape(shape)
  y = torch.from_numpy(labels[:n]).long()
  opt = make_opt(model.parameters())
  loss_fn = nn.CrossEntropyLoss()
  times = []
  for _ in range(epochs):
    start = time.perf_counter()
    model.train()
    order = torch.randperm(n)
    for i in range(0, n, config.batch_size):
      idx = order[i:i + config.batch_size]
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(model(x[idx]), y[idx])
      loss.backward()
      opt.step()
    times.append(time.perf_counter() - start)
  return {"model": name, "framework": "pytorch", "torch": torch.__version__,
          "threads": threads, "batch_size": config.batch_size,
          "train_examples": n, "epoch_times_s": [round(t, 3) for t in times],
          "epoch_time_s": round(statistics.median(times[1:] or times), 3)}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="all")
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
  p.add_argument("--data_dir", default=None)
  p.add_argument("--mnist_dir", default=None)
  args = p.parse_args(argv)
  sys.path.insert(0, ROOT)
  if importlib.util.find_spec("torch") is None:
    sys.exit("error: PyTorch is not installed; pip install torch (only this "
             "reference script needs it)")
  from mnist_jax import models  # pylint: disable=g-import-not-at-top
  from mnist_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from mnist_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    arrays = pipeline.prepare("mnist", args.data_dir, args.mnist_dir)
  except UserError as e:
    sys.exit(f"error: {e}")
  names = list(models.MODELS) if args.model == "all" else args.model.split(",")
  for name in names:
    print(json.dumps(time_model(name, arrays["train_images"],
                                arrays["train_labels"], args.epochs,
                                args.threads)), flush=True)


if __name__ == "__main__":
  main()

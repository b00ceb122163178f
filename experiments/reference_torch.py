"""PyTorch timing of the six seed architectures, to set beside experiments/benchmark.py.

  pip install torch   # not a dependency of mnist_jax; this script only
  python experiments/reference_torch.py --model=all --epochs=3 --mnist_dir=DIR

The seed presets' networks, optimizers, batch sizes and training-set sizes,
trained as a careful PyTorch user would (the data as tensors in memory, one
`randperm` an epoch, a slice a batch, a thread per core JAX sees). Prints a
JSON line per model: `epoch_time_s`, the median of the epochs after the first.
"""

import importlib.util
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mnist_jax import models
from mnist_jax.data import pipeline
from mnist_jax.errors import UserError

from experiments.tables import parser, script


def _build(name, torch, nn):
  """(module, optimizer factory, input shape) of one seed preset."""
  class LastState(nn.Module):
    """A recurrent layer over 28 rows of 28 pixels, last state to Dense(10)."""

    def __init__(self, cell):
      super().__init__()
      self.rnn = cell(28, 128, batch_first=True)
      self.out = nn.Linear(128, 10)

    def forward(self, x):
      return self.out(self.rnn(x)[0][:, -1])

  opt = lambda p: torch.optim.Adam(p, lr=1e-3)
  if name == "linear":
    return nn.Linear(784, 10), opt, (-1, 784)
  if name == "mlp":
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(512, 256), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(256, 10)), opt, (-1, 784)
  if name == "cnn":
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64 * 5 * 5, 128), nn.ReLU(), nn.Linear(128, 10),
    ), opt, (-1, 1, 28, 28)
  cell = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[name]
  if name == "lstm":  # The seed LSTM notebook used RMSprop.
    opt = lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.9, eps=1e-7)
  return LastState(cell), opt, (-1, 28, 28)


def time_model(name, images, labels, epochs, threads):
  import torch
  from torch import nn
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  config = models.get_config(name, "seed")
  n = int(len(labels) * (1 - config.val_fraction))
  model, make_opt, shape = _build(name, torch, nn)
  x = torch.from_numpy(images[:n]).float().div_(255).reshape(shape)
  y = torch.from_numpy(labels[:n]).long()
  opt, loss_fn, times = make_opt(model.parameters()), nn.CrossEntropyLoss(), []
  for _ in range(epochs):
    start = time.perf_counter()
    model.train()
    order = torch.randperm(n)
    for i in range(0, n, config.batch_size):
      idx = order[i:i + config.batch_size]
      opt.zero_grad(set_to_none=True)
      loss_fn(model(x[idx]), y[idx]).backward()
      opt.step()
    times.append(time.perf_counter() - start)
  return {"model": name, "framework": "pytorch", "torch": torch.__version__,
          "threads": threads, "batch_size": config.batch_size,
          "train_examples": n, "epoch_times_s": [round(t, 3) for t in times],
          "epoch_time_s": round(statistics.median(times[1:] or times), 3)}


def main(argv=None):
  p = parser(__doc__)
  p.add_argument("--model", default="all")
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
  args = p.parse_args(argv)
  if importlib.util.find_spec("torch") is None:
    raise UserError("PyTorch is not installed; pip install torch (only this "
                    "reference script needs it)")
  arrays = pipeline.prepare("mnist", args.data_dir, args.mnist_dir)
  for name in models.MODELS if args.model == "all" else args.model.split(","):
    print(json.dumps(time_model(name, arrays["train_images"],
                                arrays["train_labels"], args.epochs,
                                args.threads)), flush=True)


if __name__ == "__main__":
  script(main)

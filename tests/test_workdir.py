"""The run folder: the one a command without --workdir picks; locks; resumes."""

import json
import os

from mnist_jax import workdir
from mnist_jax.models import registry


def test_resume_records_only_the_settings_that_changed(tmp_path):
  """A tuple setting (cnn_features, mlp_hidden) is a list in config.json: it
  is not 'changed' by a resume that keeps it."""
  config = registry.get_config("cnn", "best")
  path = str(tmp_path / "run")
  workdir.start(path, config, {})
  workdir.record_resume(path, config.replace(chunk_steps=7), {}, {"step": 9})
  with open(os.path.join(path, workdir.CONFIG_FILE)) as f:
    resume = json.load(f)["resumes"][0]
  assert resume["from_step"] == 9
  assert resume["changed"] == {"chunk_steps": 7}

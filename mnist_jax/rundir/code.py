"""The code a run trained with (config.json's `environment.code`: the git
commit, the tracked files edited and their diff, the SHA-256 of each CORE
file, what the numbers depend on, known without git too), and what changed
since: every mode that loads a run says where the code it runs now differs.
"""

import hashlib
import os
import subprocess
from typing import Any, Dict, List, Optional

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(PACKAGE)
CORE = ("data", "models", "training", "optim.py", "config.py")
DIFF_FILE = "edits.diff"  # In the run folder, where the tree was dirty.


def core_files() -> Dict[str, str]:
  """{package path ("models/cnn.py"): its SHA-256} of the core's files."""
  out = {}
  for part in CORE:
    path = os.path.join(PACKAGE, part)
    found = [path] if path.endswith(".py") else [
        os.path.join(folder, name) for folder, _, names in os.walk(path)
        for name in names if name.endswith(".py")]
    for file in found:
      with open(file, "rb") as f:
        out[os.path.relpath(file, PACKAGE)] = hashlib.sha256(
            f.read()).hexdigest()
  return dict(sorted(out.items()))


def _git(*args) -> str:
  return subprocess.run(["git", "-C", ROOT, *args], capture_output=True,
                        text=True, timeout=5, check=True).stdout


def record() -> Dict:
  """This checkout's code, as config.json records it, and its diff (None
  where clean or without git) under "diff", which `begin` writes apart."""
  out: Dict[str, Any] = {"commit": None, "dirty": None, "edited": [],
                         "files": core_files(), "diff": None}
  try:
    out["commit"] = _git("rev-parse", "HEAD").strip()
    out["edited"] = _git("diff", "--name-only", "HEAD").split()
    out["dirty"] = bool(out["edited"])
    out["diff"] = _git("diff", "HEAD") if out["edited"] else None
  except (OSError, subprocess.SubprocessError):
    pass
  return out


def changed(recorded: Dict) -> List[str]:
  """The core's files (package paths) that differ between the code a record
  holds and this checkout's; [] where the record holds none (older runs)."""
  then = recorded.get("files")
  if not isinstance(then, dict):
    return []
  now = core_files()
  return sorted(f for f in set(then) | set(now) if then.get(f) != now.get(f))


def summary(recorded: Dict) -> Optional[str]:
  """"code: 1a2b3c4, edited: mnist_jax/models/recurrent.py" where the tree
  was dirty; None where it was clean (or unknown)."""
  if not recorded.get("dirty"):
    return None
  return (f"code: {(recorded.get('commit') or 'no commit')[:7]}, edited: "
          f"{', '.join(recorded.get('edited') or []) or 'unknown files'}")


def note(workdir: str, recorded: Dict,
         now: str = "these results are of the code here now") -> Optional[str]:
  """The one line that says `workdir` was trained on other code than this
  checkout's, naming the files, then `now`; None where they agree (or it
  is unknown)."""
  files = changed(recorded)
  if not files:
    return None
  return (f"{workdir} was trained with other code: {', '.join(files)} "
          "changed since (its config.json's environment.code holds what it "
          f"ran); {now}")

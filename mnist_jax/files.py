"""Writing a file whole or not at all (a temporary name beside it, renamed
when complete), with mode 0o666 less the umask as `open(path, "w")` (not
mkstemp's 0o600).
"""

import contextlib
import csv
import json
import os
import re
import secrets
import tempfile
from typing import IO, Any, Iterator, List, Sequence

# The temporary names `atomic` writes to: .<name>.<pid>-<8 hex digits>.tmp
_TEMPORARY = re.compile(r"^\..+\.(?:(\d+)-)?[0-9a-f]{8}\.tmp$")


@contextlib.contextmanager
def atomic(path: str, mode: str = "w") -> Iterator[IO]:
  """Yields a temporary file beside `path` ("w" text or "wb" binary), renamed
  to `path` on success; if the block raises, `path` is left as it was."""
  folder, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(folder,
                     f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
  try:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  except OSError as e:
    e.filename = path  # Not the temporary name: the file meant.
    raise
  try:
    with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
      yield f
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError) and e.filename is None:
      e.filename = path  # A failed write names no file: say which.
    raise


def probe_writable(folder: str) -> None:
  """Creates and removes a file in `folder`: OSError if it cannot be written."""
  tempfile.TemporaryFile(dir=folder).close()


def write_text(path: str, text: str) -> None:
  with atomic(path) as f:
    f.write(text)


def write_json(path: str, obj) -> None:
  """Indented JSON with sorted keys and a final newline."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str, rows: Sequence[Sequence[Any]]) -> None:
  """Rows of cells as CSV with "\\n" line ends; the first row is the header."""
  with atomic(path) as f:
    csv.writer(f, lineterminator="\n").writerows(rows)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:
    return True
  return pid != 0


def remove_temporary(folder: str, locked: bool = True) -> List[str]:
  """Removes what `atomic` left in `folder` when killed: every temporary file
  under the folder's lock (`locked`), else those of dead writers. Returns
  the names removed."""
  removed = []
  try:
    names = os.listdir(folder)
  except OSError:
    return removed
  for name in names:
    path, match = os.path.join(folder, name), _TEMPORARY.match(name)
    if match and os.path.isfile(path) and (
        locked or (match.group(1) and not _alive(int(match.group(1))))):
      with contextlib.suppress(OSError):
        os.remove(path)
        removed.append(name)
  return removed


def table(header: Sequence[str], rows: Sequence[Sequence[Any]],
          align: str) -> List[str]:
  """A markdown table's lines; `align`: "l" or "r" for each column."""
  return ["|" + "".join(f" {h} |" if h else " |" for h in header),
          "|" + "".join("---:|" if a == "r" else "---|" for a in align),
          *("| " + " | ".join(map(str, row)) + " |" for row in rows)]

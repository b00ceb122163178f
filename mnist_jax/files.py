"""Writing a file whole or not at all (a temporary name beside it, renamed when
complete), with the mode `open(path, "w")` gives (not mkstemp's 0o600)."""

import contextlib
import csv
import json
import os
import time
from typing import IO, Any, Callable, Iterator, List, Sequence


@contextlib.contextmanager
def atomic(path: str, mode: str = "w") -> Iterator[IO]:
  """Yields a temporary file beside `path`, `.<name>.tmp` ("w" text or "wb"
  binary), renamed to `path` on success; if the block raises, `path` is left
  as it was. Files have one writer at a time (a run folder's lock, the data
  cache's), so the temporary file a killed writer left is the next one's."""
  folder, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(folder, f".{name}.tmp")
  try:
    with open(tmp, mode, newline=None if "b" in mode else "") as f:
      yield f
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    if isinstance(e, OSError) and e.filename in (None, tmp):
      e.filename = path  # The file meant, not its temporary name.
    raise


TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # config.json's and the lock's times.


def now() -> str:
  return time.strftime(TIME_FORMAT)


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


def unique(base: str, taken: Callable[[str], bool]) -> str:
  """`base`, or `base-2`, `base-3`, ... the first that is not `taken`."""
  name, n = base, 1
  while taken(name):
    n += 1
    name = f"{base}-{n}"
  return name


def table(header: Sequence[str], rows: Sequence[Sequence[Any]],
          align: str) -> List[str]:
  """A markdown table's lines; `align`: "l" or "r" for each column."""
  return ["|" + "".join(f" {h} |" if h else " |" for h in header),
          "|" + "".join("---:|" if a == "r" else "---|" for a in align),
          *("| " + " | ".join(map(str, row)) + " |" for row in rows)]

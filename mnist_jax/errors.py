"""The exception types that reach users as a one-line message."""


def first_line(exc: BaseException, limit: int = 200) -> str:
  """An exception's first line, to quote in a one-line message."""
  text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
  return text if len(text) <= limit else text[:limit] + "..."


class UserError(Exception):
  """A problem the user can fix; launch.py prints it (what went wrong and what
  to do) as one line and exits 1."""
  exit_code = 1


class BadFlag(UserError):
  """A flag whose value does not parse: exit 2, as absl's own refusals."""
  exit_code = 2


class Diverged(UserError):
  """Training produced a non-finite loss: exit 3, unlike bad input. `row`:
  the metrics.jsonl row that records it (epoch, step, message)."""
  exit_code = 3

  def __init__(self, message: str, row=None):
    super().__init__(message)
    self.row = row or {"diverged": True, "message": message}


class OutOfResources(UserError):
  """Out of memory or disk space: exit 5, as more may make it succeed."""
  exit_code = 5

"""The exception types that reach users as a one-line message."""


class UserError(Exception):
  """A problem the user can fix; `launch.py` prints it as one line and exits 1.

  The message must say what went wrong and what to do about it.
  """
  exit_code = 1


class Diverged(UserError):
  """Training produced a non-finite loss; exit status 3 tells it from bad input."""
  exit_code = 3


class OutOfResources(UserError):
  """The machine has (or would have) run out of memory or disk space: exit
  status 5, as the same command may succeed once there is more."""
  exit_code = 5

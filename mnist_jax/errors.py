"""The one exception type that reaches users as a one-line message."""


class UserError(Exception):
  """A problem the user can fix; `launch.py` prints it as one line and exits 1.

  The message must say what went wrong and what to do about it.
  """

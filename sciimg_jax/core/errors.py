"""The one exception type for bad input."""


class InputError(ValueError):
  """Bad user input: a missing file, a wrong shape or affine, an empty volume, an unknown key.

  The message always names the offending file (or config key) and the problem, so
  `main.py` can print it as one line instead of a traceback.
  """

  def __init__(self, where, problem):
    self.where = str(where)
    self.problem = problem
    super().__init__(f"{where}: {problem}")

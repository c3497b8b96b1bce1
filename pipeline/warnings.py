"""Warning category of the project, so callers and tests can filter it."""


class FleximoWarning(UserWarning):
    """Warning raised by fleximo-pipeline when data is skipped or a default is guessed."""

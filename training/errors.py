"""The training command's own error, in a module of its own: training.train (run as `python -m
training.train`, so loaded as __main__) and training.run both raise it, and a class defined in
training.train would be two classes then, one of which main() would not catch."""


class UsageError(Exception):
    """A setting that cannot work here: reported in one line with exit status 2."""

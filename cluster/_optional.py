"""Lazy imports of the optional cluster backends, with errors that name the extra."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingBackendError(ImportError, RuntimeError):
    """Raised when a profile needs a backend package that is not installed.

    It is also a ``RuntimeError``, so command-line front ends that report
    runtime errors as one line report this one the same way.
    """


def import_backend(module: str, extra: str, *, profile_kind: str) -> ModuleType:
    """Import ``module`` or raise an error that names the extra to install.

    Parameters
    ----------
    module
        Dotted module name, e.g. ``"dask_jobqueue"``.
    extra
        Name of the fleximo-pipeline extra that installs it, e.g. ``"slurm"``.
    profile_kind
        Profile kind that needs it, quoted in the message.

    Raises
    ------
    MissingBackendError
        If the module or one of its own dependencies cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingBackendError(
            f"cluster profile kind {profile_kind!r} needs the Python package {module!r}, "
            f"which failed to import ({error}). Install it with "
            f"`pip install 'fleximo-pipeline[{extra}]'`."
        ) from error

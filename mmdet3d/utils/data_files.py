"""Data-file faults and the one reader of pickled info files.

Info files (``*_infos_*.pkl``, the GT database ``*_dbinfos_train.pkl``, mmdet3d 1.x infos) are
plain pickles: unpickling runs whatever the file says, so they are **trusted input**. Use only
files you made with ``tools/create_data.py`` or got from a source you trust (docs/data_format.md).
"""
from __future__ import annotations

import os
import pickle
from typing import Any

__all__ = ["DataFileError", "MissingDataFileError", "with_sample_token", "load_trusted_pickle"]


class DataFileError(ValueError):
    """A data file (points, image, info pkl) is empty, truncated, corrupt or holds bad values;
    the message names the file and, where known, the sample token."""


class MissingDataFileError(FileNotFoundError):
    """A data file (info pkl, or a file an info names) does not exist; the message names it."""


def with_sample_token(error: Exception, token: str) -> Exception:
    """The same kind of data-file error with ``(sample token ...)`` added unless it names the token."""
    message = str(error.args[0]) if error.args else str(error)
    if token in message:
        return error
    return type(error)(f"{message} (sample token {token})")


def load_trusted_pickle(path: str, what: str = "info file") -> Any:
    """Unpickle ``path`` (trusted input, see the module docstring); a missing, truncated or
    corrupt file is a ``DataFileError`` naming it."""
    if not os.path.isfile(path):
        raise MissingDataFileError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, ImportError, IndexError, MemoryError) as e:
        reason = "truncated" if isinstance(e, EOFError) or "truncated" in str(e) else "corrupt or not a pickle"
        raise DataFileError(f"{what} {path} cannot be read: {reason} ({type(e).__name__}: {e})") from None

"""The errors and warnings of the datasets (each message names the file or folder)."""
from __future__ import annotations


class DatasetError(ValueError):
    """The folder layout is not a valid dataset (the message names the file or folder)."""


class MissingFolderError(FileNotFoundError, DatasetError):
    """A folder the dataset needs does not exist."""


class ImageReadError(OSError):
    """An image or mask file exists but cannot be decoded (the message names it)."""


class SkippedImageWarning(UserWarning):
    """An unreadable evaluation image was dropped from the dataset."""

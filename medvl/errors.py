"""The medvl error hierarchy.

Every error a user can cause names *what* (the file or config key), *which field* and
*what was expected*, so the CLI can print one clear line and exit with code 2 instead
of a traceback from deep inside a library.
"""

from __future__ import annotations

from os import PathLike


class MedvlError(Exception):
    """Base class of every error medvl raises on purpose.

    Args:
        message: what went wrong, in one sentence.
        path: the file or directory involved, if any.
        field: the tag, column, key or argument involved, if any.
        expected: what a valid value looks like, if it helps the user.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | PathLike[str] | None = None,
        field: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.field = field
        self.expected = expected
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = []
        if self.path:
            parts.append(self.path)
        if self.field:
            parts.append(f"[{self.field}]")
        head = " ".join(parts)
        text = f"{head}: {self.message}" if head else self.message
        if self.expected:
            text += f" (expected {self.expected})"
        return text


class ConfigError(MedvlError):
    """An experiment config or command-line override is invalid."""


class ImageReadError(MedvlError):
    """An image file cannot be read or holds invalid data."""


class MissingDecoderError(ImageReadError):
    """Pixel data is compressed with a transfer syntax no installed decoder handles."""


class SeriesError(ImageReadError):
    """A DICOM series cannot be assembled into a consistent volume."""


class ManifestError(MedvlError):
    """A manifest row is malformed or points at something that does not exist."""


class ReportError(MedvlError):
    """A report is empty or cannot be parsed."""


class ModelError(MedvlError):
    """A model directory, encoder input or checkpoint does not fit what is expected."""


class LossInputError(ModelError):
    """The tensors handed to a loss term do not have the shapes the term needs."""


class CheckpointError(ModelError):
    """A checkpoint cannot be loaded or does not match the config."""


class TrainingError(MedvlError):
    """Training cannot continue (for example a non-finite loss)."""


class CaseIndexError(MedvlError):
    """A case index is missing, corrupt or incompatible with the model."""


class DatasetRecipeError(MedvlError):
    """A corpus root does not have the layout a recipe expects."""


class PacsError(MedvlError):
    """A DICOMweb server cannot be reached, refuses the request or answers something unusable."""

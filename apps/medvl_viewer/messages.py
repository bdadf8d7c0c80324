"""Plain-language messages for what goes wrong with a query.

A clinician needs to know what is wrong and what to do, in words: not a server's temp
path, not a DICOM tag number such as ``(7FE0,0010)``, not an exception class. Each
function here turns a library error into one sentence or two; the page shows one
message per problem, never two that disagree.
"""

from __future__ import annotations

import re

from medvl.errors import ImageReadError, MedvlError, MissingDecoderError, SeriesError
from medvl_viewer.uploads import ACCEPTED, UploadError

#: DICOM tag numbers as pydicom and messages print them: (7FE0,0010), (0028, 0010), 7FE00010.
_TAG = re.compile(
    r"\(?\b[0-9A-Fa-f]{4},\s*[0-9A-Fa-f]{4}\)?|\b[0-9A-Fa-f]{8}\b|\bgroup\s+[0-9A-Fa-f]{4}\b(?:\s+element)?",
    re.IGNORECASE,
)
#: Absolute paths (POSIX or Windows) and file names with an image extension.
_PATH = re.compile(r"(?:[A-Za-z]:\\|/)[^\s:;,'\"()]+|\b[\w.-]+\.(?:dcm|dicom|ima|nii|gz|zip|png|jpe?g)\b",
                   re.IGNORECASE)


def scrub(text: str) -> str:
    """``text`` without paths, file names and tag numbers (each becomes a neutral word)."""
    text = _PATH.sub("the file", str(text))
    text = _TAG.sub("", text)
    return re.sub(r"\s{2,}", " ", re.sub(r"\s+([.,;:)])", r"\1", text)).strip()


def upload_message(exc: UploadError) -> str:
    """Why an upload was refused, in plain words (the message names no file)."""
    msg = exc.message
    limit = f" ({exc.expected})" if exc.expected and "MiB" in exc.expected else ""
    if "too large" in msg or "more than the allowed size" in msg or "unpacks to" in msg:
        return f"The file is too large for this viewer{limit}. Upload a smaller file or one series."
    if "empty" in msg:
        return "The file is empty. Upload " + ACCEPTED + "."
    if "unsupported file type" in msg:
        return "This type of file cannot be read here. Upload " + ACCEPTED + "."
    if "not a DICOM" in msg:
        return ("This file is not a DICOM image (it lacks the DICOM file marker). Upload " + ACCEPTED + ".")
    if "NIfTI" in msg or "gzip" in msg:
        return "This file is not a readable NIfTI image. Upload " + ACCEPTED + "."
    if "zip" in msg:
        if "no DICOM" in msg:
            return "The zip file holds no DICOM images. Upload a zip of one DICOM series."
        return "The zip file cannot be used: " + scrub(msg) + ". Upload a zip of one DICOM series."
    return "The file cannot be used: " + scrub(msg) + "."


def read_message(exc: BaseException, what: str = "The image") -> str:
    """Why an image cannot be shown, in plain words.

    Args:
        exc: what the reader raised.
        what: how to name the image ("The uploaded file", "The image of this case").
    """
    if isinstance(exc, MissingDecoderError):
        return f"{what} is compressed in a format this installation cannot decode."
    if isinstance(exc, SeriesError):
        return f"{what} is not one consistent series (slices missing, mixed or unevenly spaced): " \
               f"{scrub(exc.message)}."
    if isinstance(exc, ImageReadError):
        msg = exc.message.lower()
        if any(w in msg for w in ("truncat", "ends early", "too short", "buffer", "incomplete", "expected")):
            return f"{what} is incomplete or damaged: its pixel data ends early."
        if "4d" in msg or "volumes" in msg:
            return f"{what} holds several volumes; choose one in the sidebar."
        return f"{what} cannot be read: {scrub(exc.message)}."
    if isinstance(exc, MedvlError):
        return f"{what} cannot be used: {scrub(exc.message)}."
    # Anything else is unexpected: say so without the library's internals.
    return f"{what} cannot be read (the file is damaged or of an unsupported kind)."


def failure_message(what: str, exc: BaseException) -> str:
    """``what``: a scrubbed reason (for failures after the image was read)."""
    reason = scrub(exc.message) if isinstance(exc, MedvlError) else "an unexpected error (details in the server log)"
    return f"{what}: {reason}."

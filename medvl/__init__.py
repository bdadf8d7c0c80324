"""medvl: a medical vision-language platform.

Reads radiology images as a PACS does (DICOM, NIfTI), pairs them with their reports,
trains dual encoders aligned at several granularities, evaluates them the way papers in
the field do, and serves a case-retrieval viewer.
"""

__version__ = "0.1.0"

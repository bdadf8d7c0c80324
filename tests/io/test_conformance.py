"""Conformance on real files nobody here wrote: pydicom's test files and pydicom-data.

Every file either reads, with values equal to pydicom's own ``apply_modality_lut``
and ``apply_voi_lut`` (float tolerance), or fails with a medvl ``ImageReadError``
that names the file and the reason; never a raw exception from inside a library.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medvl.errors import ImageReadError
from medvl.io import read_image, window_image

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
_SKIP_SUFFIXES = (".py", ".pyc", ".json", ".dump", ".icc", ".gz", ".txt")


def _data_store() -> Path | None:
    path = pydicom.data.get_testdata_file("RG1_UNCR.dcm", download=False)
    return Path(path).parent if path else None


def _files() -> list[Path]:
    roots = [PYDICOM_FILES] + ([_data_store()] if _data_store() else [])
    out = []
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.name.endswith(_SKIP_SUFFIXES) and "__pycache__" not in p.parts:
                out.append(p)
    return out


FILES = _files()


def _ids(paths):
    return [str(p.relative_to(p.parents[1])) if "dicomdirtests" in p.parts else p.name for p in paths]


def _reference(path: Path):
    """pydicom's own reading of the file: (dataset, pixels) or (None, exception)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
            if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}) and len(ds):
                # no file meta (pre-Part 10 writer): pydicom's documented fix is to
                # state the encoding it parsed the file with
                ds.file_meta = pydicom.dataset.FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = (
                    pydicom.uid.ImplicitVRLittleEndian if ds.is_implicit_VR
                    else pydicom.uid.ExplicitVRLittleEndian if ds.is_little_endian
                    else pydicom.uid.ExplicitVRBigEndian)
            frames = int(ds.get("NumberOfFrames") or 1)
            if frames > 1 and ds.get("PhotometricInterpretation", "").startswith(("RGB", "YBR", "PALETTE")):
                ds.pixel_array_options(index=0)  # colour cine: compare the first frame
            pixels = ds.pixel_array
            return ds, pixels
        except Exception as exc:  # noqa: BLE001 - the reference may fail; medvl must then refuse clearly
            return None, exc


# pydicom 3.0's apply_color_lut reads 16-bit non-segmented palette LUT data as
# little-endian whatever the file's byte order, so for these big-endian files the
# reference is pydicom's reading of the little-endian twin (same pixels, per
# test_transfer_syntaxes.py).
BIG_ENDIAN_PALETTE_TWINS = {"OBXXXX1A_expb.dcm": "OBXXXX1A.dcm",
                            "OBXXXX1A_expb_2frame.dcm": "OBXXXX1A_2frame.dcm"}


def _colour_reference(path: Path, ds, ref):
    if path.name in BIG_ENDIAN_PALETTE_TWINS:
        ds, ref = _reference(path.with_name(BIG_ENDIAN_PALETTE_TWINS[path.name]))
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        return pydicom.pixels.apply_color_lut(ref, ds)
    return ref


def _frame_dataset(ds, i: int):
    """A copy of ``ds`` carrying frame ``i``'s rescale from the functional groups at top level."""
    out = copy.copy(ds)
    for groups, idx in (("PerFrameFunctionalGroupsSequence", i), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq and len(seq) > idx and seq[idx].get("PixelValueTransformationSequence"):
            item = seq[idx].PixelValueTransformationSequence[0]
            out.RescaleSlope, out.RescaleIntercept = item.RescaleSlope, item.RescaleIntercept
            return out
    return out


def _physical(stored, ds, i=0):
    fds = _frame_dataset(ds, i)
    out = pydicom.pixels.apply_modality_lut(stored, fds).astype(np.float64)
    if ds.get("Modality") == "RTDOSE" and ds.get("DoseGridScaling"):
        out = out * float(ds.DoseGridScaling)
    return out, fds


def _voi_output_range(ds):
    """The output range pydicom's apply_windowing maps a window onto."""
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, 2.0 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
    elif ds.PixelRepresentation == 0:
        lo, hi = 0.0, 2.0**ds.BitsStored - 1
    else:
        lo, hi = -(2.0 ** (ds.BitsStored - 1)), 2.0 ** (ds.BitsStored - 1) - 1
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        lo, hi = lo * float(ds.RescaleSlope) + float(ds.RescaleIntercept), hi * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return lo, hi


def _check_display(img, physical, ds):
    """The file's VOI step (LUT or window) against pydicom's apply_voi_lut."""
    has_lut = bool(ds.get("VOILUTSequence"))
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not (has_lut or has_window) or img.is_color:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pydicom.pixels.apply_voi_lut(physical, ds).astype(np.float64)
    ours = window_image(img, "file").astype(np.float64)
    if has_lut:
        scale = 2.0 ** img.voi_luts[0].bits - 1
        np.testing.assert_allclose(ours * scale, ref, atol=1e-3 * scale)
    else:
        lo, hi = _voi_output_range(ds)
        np.testing.assert_allclose(ours * (hi - lo) + lo, ref, atol=1e-4 * abs(hi - lo) + 1e-6)


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_real_file_reads_like_pydicom_or_fails_clearly(path: Path):
    ds, ref = _reference(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = read_image(path)
    except ImageReadError as exc:
        assert path.name in str(exc), f"error does not name the file: {exc}"
        assert ":" in str(exc) and len(exc.message) > 10
        if ds is not None and "frame=" in str(exc):
            # colour cine: refused as a volume, but its frames read
            one = read_image(path, frame=0)
            expected = _colour_reference(path, ds, ref)
            np.testing.assert_array_equal(one.array, expected.astype(np.float32))
        elif ds is not None:
            pytest.fail(f"pydicom decodes this file but medvl refused it: {exc}")
        return
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"raw {type(exc).__name__} escaped from a library: {exc}")

    assert ds is not None, f"medvl read a file pydicom cannot decode ({ref!r})"
    assert img.array.dtype == np.float32
    frames = int(ds.get("NumberOfFrames") or 1)
    if img.is_color:
        expected = _colour_reference(path, ds, ref)
        np.testing.assert_array_equal(img.array, expected.astype(np.float32))
        return
    if frames == 1:
        assert img.array.shape == ref.shape and img.affine is None
        physical, fds = _physical(ref, ds)
        np.testing.assert_allclose(img.array, physical, rtol=1e-5, atol=1e-4)
        _check_display(img, physical, fds)
        return
    # a multi-frame grayscale object is a volume: every frame reads alone exactly, and the
    # volume holds exactly the frames' values (placement is tested on synthetic geometry)
    assert img.affine is not None and img.array.ndim == 3
    physical = [_physical(ref[i], ds, i)[0] for i in range(frames)]
    for i in range(frames):
        one = read_image(path, frame=i)
        np.testing.assert_allclose(one.array, physical[i], rtol=1e-5, atol=1e-4)
    if not img.tags.get("resampled"):
        np.testing.assert_allclose(np.sort(img.array.ravel()), np.sort(np.concatenate([p.ravel() for p in physical])),
                                   rtol=1e-5, atol=1e-4)


def test_sweep_covers_the_real_files():
    """The sweep really runs over the bundled corpus (about 150 files with pixel data)."""
    names = {p.name for p in FILES}
    for must in ("CT_small.dcm", "MR_small_jp2klossless.dcm", "JPEG-LL.dcm", "RG1_J2KR.dcm",
                 "emri_small_jpeg_ls_lossless.dcm", "vlut_04.dcm", "mlut_18.dcm", "SC_rgb_rle.dcm"):
        if must.startswith(("RG1", "emri", "vlut", "mlut", "JPEG-LL")) and _data_store() is None:
            continue
        assert must in names
    assert len(FILES) >= (150 if _data_store() else 80)

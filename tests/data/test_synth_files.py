"""Files of the synthetic corpus read back with pydicom and nibabel (independent readers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from medvl.data.manifest import read_manifest, resolve_path
from medvl.data.synth import SynthConfig, generate_corpus, plan_corpus
from medvl.data.synth.ct import render_ct, sample_ct_anatomy, sample_ct_grid
from medvl.data.synth.cxr import render_cxr, sample_anatomy
from medvl.data.synth.writers import encoder_available

SETTINGS = {"n_cxr": 16, "n_ct": 6, "seed": 3, "image_size": 128, "ct_size": (32, 32, 20),
                "compressed_fraction": 0.6, "ct_dicom_fraction": 0.5}
CR, DX = "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_corpus(tmp_path_factory.mktemp("files"), **SETTINGS)


@pytest.fixture(scope="module")
def plans() -> dict:
    return {p.study_id: p for p in plan_corpus(SynthConfig(**SETTINGS))}


def test_radiograph_tags_are_those_real_files_carry(corpus: Path) -> None:
    rows = [r for r in read_manifest(corpus) if r.dims == 2]
    photometrics, syntaxes = set(), set()
    for r in rows:
        ds = pydicom.dcmread(resolve_path(corpus, r.image))
        assert ds.SOPClassUID == (DX if r.modality == "DX" else CR)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == r.modality and ds.ViewPosition == r.view
        assert ds.PatientID == r.patient_id and str(ds.PatientName).startswith("SYN^")
        assert 12 <= ds.BitsStored <= 16 and ds.BitsAllocated == 16 and ds.HighBit == ds.BitsStored - 1
        assert float(ds.PixelSpacing[0]) == pytest.approx(0.7 * 512 / 128)
        assert "RescaleSlope" in ds and "RescaleIntercept" in ds and "WindowCenter" in ds and "WindowWidth" in ds
        assert ds.file_meta.TransferSyntaxUID == r.meta["transfer_syntax"]
        if r.modality == "DX":
            inverse = ds.PhotometricInterpretation == "MONOCHROME1"
            assert ds.PresentationLUTShape == ("INVERSE" if inverse else "IDENTITY")
        assert ds.VOILUTFunction in ("LINEAR", "SIGMOID")
        photometrics.add(ds.PhotometricInterpretation)
        syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert uid.startswith("2.25.") and len(uid) <= 64 and uid.is_valid
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    available = [c for c in ("rle", "jpeg2000", "jpegls") if encoder_available(c)]
    assert len(syntaxes) == 1 + len(available), "each installed encoder should be used"


def test_modality_lut_recovers_the_phantom(corpus: Path, plans: dict) -> None:
    """pydicom's own modality LUT on the stored values gives back the rendered attenuation."""
    for r in [r for r in read_manifest(corpus) if r.dims == 2][:8]:
        p = plans[r.study_id]
        att = render_cxr(sample_anatomy(p.anatomy_seed), p.findings, size=128, spacing=0.7 * 4,
                         seed=p.render_seed, view=p.view).attenuation
        ds = pydicom.dcmread(resolve_path(corpus, r.image))
        out = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
        expected = 1000.0 * np.clip(att, 0, 4)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            expected = 4000.0 - expected
        assert np.abs(out - expected).max() <= float(ds.RescaleSlope) / 2 + 1e-3, r.study_id


def test_window_and_photometric_display_lungs_dark_and_mediastinum_bright(corpus: Path) -> None:
    for r in [r for r in read_manifest(corpus) if r.dims == 2]:
        ds = pydicom.dcmread(resolve_path(corpus, r.image))
        shown = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=0).astype(np.float64)
        lo, hi = shown.min(), shown.max()
        if ds.PhotometricInterpretation == "MONOCHROME1":
            shown = hi + lo - shown  # minimum value is displayed white
        n = shown.shape[0]
        lung = shown[int(0.35 * n):int(0.45 * n), int(0.20 * n):int(0.26 * n)].mean()  # patient's right mid lung
        spine = shown[int(0.30 * n):int(0.40 * n), int(0.48 * n):int(0.52 * n)].mean()  # mediastinum
        outside = shown[:, :3].mean()  # air beside the body
        assert outside < lung < spine, r.study_id


def test_compressed_radiographs_decode_losslessly(corpus: Path) -> None:
    rows = [r for r in read_manifest(corpus) if r.dims == 2 and r.meta["transfer_syntax"] != "1.2.840.10008.1.2.1"]
    if not rows:
        pytest.skip("no encoder installed")
    for r in rows:
        ds = pydicom.dcmread(resolve_path(corpus, r.image))
        assert ds.file_meta.TransferSyntaxUID.is_compressed
        arr = ds.pixel_array
        assert arr.shape == (128, 128) and arr.max() < 2 ** ds.BitsStored


def _series_volume(folder: Path, affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, list[str]]:
    """Place every DICOM pixel into the RAS voxel grid using the standard DICOM geometry."""
    vol = np.full(shape, np.nan)
    files = sorted(folder.iterdir())
    inv = np.linalg.inv(affine)
    zs = []
    for f in files:
        ds = pydicom.dcmread(f)
        hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
        ipp = np.array(ds.ImagePositionPatient, dtype=float)
        row_dir, col_dir = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
        dr, dc = (float(v) for v in ds.PixelSpacing)  # row spacing, column spacing
        rr, cc = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
        lps = ipp + cc[..., None] * dc * row_dir + rr[..., None] * dr * col_dir  # PS3.3 C.7.6.2.1.1
        ras = lps * np.array([-1, -1, 1])
        ijk = np.rint(np.c_[ras.reshape(-1, 3), np.ones(ras.size // 3)] @ inv.T)[:, :3].astype(int)
        vol[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = hu.reshape(-1)
        zs.append(ipp[2])
    return vol, [str(z) for z in zs]


def test_ct_series_geometry_matches_the_volume(corpus: Path, plans: dict) -> None:
    rows = [r for r in read_manifest(corpus) if r.meta.get("storage") == "dicom_series"]
    assert rows
    for r in rows:
        p = plans[r.study_id]
        shape = (32, 32, 20)
        affine = sample_ct_grid(p.render_seed, shape)
        hu = render_ct(sample_ct_anatomy(p.anatomy_seed), p.findings, shape=shape, affine=affine,
                       seed=p.render_seed).hu
        vol, zs = _series_volume(resolve_path(corpus, r.image), affine, shape)
        assert not np.isnan(vol).any()
        assert np.abs(vol - np.rint(hu)).max() <= 0.5
        assert zs != sorted(zs, key=float), "file order should not be slice order"
        assert r.meta["spacing_mm"] == [round(float(affine[d, d]), 4) for d in range(3)]


def test_ct_nifti_holds_the_volume_in_hu_and_masks_share_its_grid(corpus: Path, plans: dict) -> None:
    import nibabel as nib

    rows = [r for r in read_manifest(corpus) if r.dims == 3 and r.meta.get("storage") == "nifti"]
    assert {r.meta["nifti_orientation"] for r in rows} == {"RAS", "LPS"}
    for r in rows:
        p = plans[r.study_id]
        img = nib.load(resolve_path(corpus, r.image))
        assert "".join(nib.aff2axcodes(img.affine)) == r.meta["nifti_orientation"]
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
        canon = nib.as_closest_canonical(img)
        affine = sample_ct_grid(p.render_seed, (32, 32, 20))
        assert np.allclose(canon.affine, affine, atol=1e-3)
        hu = np.asarray(canon.dataobj, dtype=np.float32)
        expected = render_ct(sample_ct_anatomy(p.anatomy_seed), p.findings, shape=(32, 32, 20), affine=affine,
                             seed=p.render_seed).hu
        assert np.abs(hu - np.rint(expected)).max() == 0
        assert hu[0, 0].mean() < -900  # air in the corner of the field of view
        assert -100 < np.median(hu[14:18, 14:18, :]) < 100  # mediastinum soft tissue
        assert list(img.header.get_zooms()) == pytest.approx(r.meta["spacing_mm"], abs=1e-3)
        for ann in r.annotations:
            m = nib.load(resolve_path(corpus, ann["mask"]))
            assert m.shape == img.shape and np.allclose(m.affine, img.affine)
            idx = np.nonzero(np.asarray(nib.as_closest_canonical(m).dataobj))
            assert ann["box"] == [int(i.min()) for i in idx] + [int(i.max()) + 1 for i in idx]


def test_lps_storage_round_trips_through_nibabel_canonical() -> None:
    import nibabel as nib

    from medvl.data.synth.writers import reorient_for_storage

    affine = sample_ct_grid(1, (8, 6, 4))
    vol = np.arange(8 * 6 * 4, dtype=np.int16).reshape(8, 6, 4)
    arr, aff = reorient_for_storage(vol, affine, "LPS")
    img = nib.Nifti1Image(arr, aff)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    canon = nib.as_closest_canonical(img)
    assert np.array_equal(np.asarray(canon.dataobj), vol) and np.allclose(canon.affine, affine)


def test_spacing_varies_between_ct_studies(tmp_path: Path) -> None:
    spacings = {tuple(sample_ct_grid(s, (96, 96, 64)).diagonal()[:3]) for s in range(6)}
    assert len(spacings) >= 4


def test_medvl_io_reads_back_the_phantoms(corpus: Path, plans: dict) -> None:
    """Contract with the io room: read_image gives physical values on the generator's RAS grid."""
    io = pytest.importorskip("medvl.io")
    for r in read_manifest(corpus):
        p = plans[r.study_id]
        img = io.read_image(resolve_path(corpus, r.image))
        if r.dims == 2:
            att = render_cxr(sample_anatomy(p.anatomy_seed), p.findings, size=128, spacing=0.7 * 4,
                             seed=p.render_seed, view=p.view).attenuation
            expected = 1000.0 * np.clip(att, 0, 4)
            if r.meta["photometric"] == "MONOCHROME1":
                expected = 4000.0 - expected
            assert np.abs(img.array - expected).max() <= r.meta["rescale_slope"] / 2 + 1e-3
        else:
            affine = sample_ct_grid(p.render_seed, (32, 32, 20))
            hu = render_ct(sample_ct_anatomy(p.anatomy_seed), p.findings, shape=(32, 32, 20), affine=affine,
                           seed=p.render_seed).hu
            assert np.array_equal(img.array, np.rint(hu))
            assert np.allclose(img.affine, affine, atol=1e-3)

"""MONAI transforms: loader in a Compose, display steps, and MONAI's own LoadImage."""

from __future__ import annotations

import numpy as np
import pytest

monai = pytest.importorskip("monai")
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImage, Orientation

from medvl.errors import ConfigError
from medvl.io import apply_window, read_image, to_display
from medvl.io.transforms import (
    LoadMedicalImage,
    LoadMedicalImaged,
    MedvlImageReader,
    Normalized,
    ToDisplayd,
    Window,
)

LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def test_dictionary_pipeline_matches_explicit_steps(testdata):
    path = testdata("RG1_UNCR.dcm")
    pipeline = Compose([LoadMedicalImaged("image"), ToDisplayd("image"), Normalized("image", "minmax")])
    out = pipeline({"image": str(path), "text": "no acute disease"})
    assert out["text"] == "no acute disease"
    img = out["image"]
    assert isinstance(img, MetaTensor) and img.shape == (1, 1955, 1841)
    assert img.meta["photometric_interpretation"] == "MONOCHROME1"
    reference = to_display(read_image(path))
    reference = (reference - reference.min()) / (reference.max() - reference.min())
    np.testing.assert_allclose(img[0].numpy(), reference, atol=1e-5)


def test_loader_affine_works_with_monai_orientation(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from io_factory import write_series

    vol = np.random.default_rng(0).integers(0, 100, size=(4, 6, 5)).astype(np.int16)
    write_series(tmp_path / "s", vol, orientation=(1, 0, 0, 0, 0, -1))
    tensor = LoadMedicalImage()(tmp_path / "s")
    image = read_image(tmp_path / "s")
    np.testing.assert_allclose(tensor.affine.numpy(), image.affine)
    # MONAI agrees the volume is already RAS: reorienting to RAS changes nothing
    ras = Orientation(axcodes="RAS", labels=LABELS)(tensor)
    np.testing.assert_allclose(ras.numpy(), tensor.numpy())
    lps = Orientation(axcodes="LPS", labels=LABELS)(tensor)
    np.testing.assert_allclose(lps[0].numpy(), image.array[::-1, ::-1, :])


def test_window_transform_presets_and_errors(testdata):
    tensor = LoadMedicalImage()(testdata("CT_small.dcm"))
    lung = Window("lung")(tensor)
    np.testing.assert_allclose(lung[0].numpy(), apply_window(tensor[0].numpy(), -600, 1500))
    assert isinstance(lung, MetaTensor) and lung.meta["modality"] == "CT"
    with pytest.raises(ConfigError, match="lung"):
        Window("lungs")


def test_monai_loadimage_with_medvl_reader(testdata):
    path = testdata("CT_small.dcm")
    tensor = LoadImage(reader=MedvlImageReader(), image_only=True)(str(path))
    np.testing.assert_allclose(np.asarray(tensor), read_image(path).array)


def test_batches_of_different_files_collate(testdata):
    """Meta has the same keys and shapes for every file, so MONAI's DataLoader batches them."""
    import json

    from monai.data import DataLoader, Dataset
    from monai.transforms import Resized

    files = [{"image": str(testdata(n))} for n in ("CT_small.dcm", "MR_small.dcm", "RG1_UNCR.dcm")]
    pipeline = Compose([LoadMedicalImaged("image"), ToDisplayd("image"), Resized("image", (16, 16))])
    batch = next(iter(DataLoader(Dataset(files, pipeline), batch_size=3, num_workers=0)))
    assert batch["image"].shape == (3, 1, 16, 16)
    assert list(batch["image"].meta["modality"]) == ["CT", "MR", "CR"]
    tags = [json.loads(t) for t in batch["image"].meta["tags"]]
    assert tags[2]["ViewPosition"] == "PA"

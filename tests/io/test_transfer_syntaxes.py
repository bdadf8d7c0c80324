"""The same image in different transfer syntaxes reads to the same array.

Independent of pydicom's reference values: a lossless encoding (RLE, JPEG-LS, JPEG
2000 lossless, big endian, implicit VR) must give exactly the uncompressed pixels, so
a decoder or byte-order bug shows up even where pydicom shares it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from medvl.io import read_image

SAME_PIXELS = {
    "MR_small.dcm": ["MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
                     "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm",
                     "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm"],
    "emri_small.dcm": ["emri_small_RLE.dcm", "emri_small_big_endian.dcm",
                       "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"],
    "RG1_UNCR.dcm": ["RG1_J2KR.dcm"],
    "RG3_UNCR.dcm": ["RG3_J2KR.dcm"],
    "MR2_UNCR.dcm": ["MR2_J2KR.dcm"],
    "693_UNCR.dcm": ["693_J2KR.dcm"],
    "US1_UNCR.dcm": ["US1_J2KR.dcm"],
    "SC_rgb.dcm": ["SC_rgb_rle.dcm", "SC_rgb_expb.dcm", "SC_rgb_gdcm2k_uncompressed.dcm",
                   "SC_rgb_jpeg_gdcm.dcm"],
    "SC_rgb_16bit.dcm": ["SC_rgb_rle_16bit.dcm", "SC_rgb_expb_16bit.dcm"],
    "SC_rgb_32bit.dcm": ["SC_rgb_rle_32bit.dcm", "SC_rgb_expb_32bit.dcm"],
    "OBXXXX1A.dcm": ["OBXXXX1A_rle.dcm", "OBXXXX1A_expb.dcm"],
    "gdcm-US-ALOKA-16.dcm": ["gdcm-US-ALOKA-16_big.dcm"],
    "rtdose.dcm": ["rtdose_rle.dcm", "rtdose_expb.dcm"],
    "JPEG2000_UNC.dcm": ["JPEG2000.dcm"],
}
PAIRS = [(ref, other) for ref, others in SAME_PIXELS.items() for other in others]


@pytest.mark.parametrize("reference,other", PAIRS, ids=[o for _, o in PAIRS])
def test_lossless_encodings_agree(testdata, reference, other):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # emri_small has no geometry: warned, tested elsewhere
        a = read_image(testdata(reference))
        b = read_image(testdata(other))
    assert a.array.shape == b.array.shape
    np.testing.assert_array_equal(a.array, b.array)
    assert a.photometric_interpretation == b.photometric_interpretation


def test_two_frame_palette_big_endian(testdata):
    a = read_image(testdata("OBXXXX1A_2frame.dcm"), frame=1)
    b = read_image(testdata("OBXXXX1A_expb_2frame.dcm"), frame=1)
    np.testing.assert_array_equal(a.array, b.array)

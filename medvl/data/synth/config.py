"""Settings of the synthetic corpus generator (one small dataclass, validated at the boundary)."""

from __future__ import annotations

from dataclasses import dataclass

from medvl.errors import ConfigError

#: Transfer syntaxes the generator may use for radiographs, by short name.
COMPRESSIONS = ("none", "rle", "jpeg2000", "jpegls")


@dataclass
class SynthConfig:
    """What to generate.

    Attributes:
        n_cxr: number of chest radiograph studies (2D, DICOM CR/DX).
        n_ct: number of chest CT studies (3D, NIfTI or DICOM series).
        seed: master seed; the same seed gives byte-identical output.
        image_size: radiograph rows and columns (square).
        pixel_spacing: radiograph pixel spacing in mm at ``image_size == 512``;
            other sizes scale it so the field of view stays about 36 cm.
        ct_size: CT grid ``(x, y, z)`` in voxels.
        workers: processes used to render studies (1 = in this process).
        compressed_fraction: share of radiographs written with a compressed
            transfer syntax (when an encoder is installed).
        compressions: transfer syntaxes to draw from for compressed radiographs,
            among ``none``, ``rle``, ``jpeg2000``, ``jpegls``; unavailable ones
            fall back to uncompressed.
        ct_dicom_fraction: share of CT studies written as a multi-file DICOM
            series instead of NIfTI.
        normal_fraction: share of studies with no pathology.
        uncertain_fraction: chance that a study carries one hedged (label -1) finding.
        max_studies_per_patient: each patient has 1..this many studies.
    """

    n_cxr: int = 100
    n_ct: int = 10
    seed: int = 0
    image_size: int = 512
    pixel_spacing: float = 0.7
    ct_size: tuple[int, int, int] = (96, 96, 64)
    workers: int = 1
    compressed_fraction: float = 0.25
    compressions: tuple[str, ...] = ("rle", "jpeg2000", "jpegls")
    ct_dicom_fraction: float = 0.3
    normal_fraction: float = 0.25
    uncertain_fraction: float = 0.15
    max_studies_per_patient: int = 3

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting."""

        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"invalid value {getattr(self, name)!r}", field=name, expected=expected)

        for name in ("n_cxr", "n_ct"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(name, "an integer >= 0")
        if self.n_cxr + self.n_ct == 0:
            raise ConfigError("nothing to generate", field="n_cxr", expected="n_cxr + n_ct >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", "an integer >= 0")
        if not isinstance(self.image_size, int) or not 64 <= self.image_size <= 4096:
            raise bad("image_size", "an integer in 64..4096")
        if not 0.05 <= float(self.pixel_spacing) <= 5.0:
            raise bad("pixel_spacing", "mm in 0.05..5")
        ct = tuple(self.ct_size)
        if len(ct) != 3 or any((not isinstance(v, int)) or v < 16 or v > 1024 for v in ct):
            raise bad("ct_size", "three integers in 16..1024 (x, y, z)")
        self.ct_size = ct
        if not isinstance(self.workers, int) or self.workers < 1:
            raise bad("workers", "an integer >= 1")
        for name in ("compressed_fraction", "ct_dicom_fraction", "normal_fraction", "uncertain_fraction"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise bad(name, "a fraction in 0..1")
        unknown = [c for c in self.compressions if c not in COMPRESSIONS]
        if unknown:
            raise ConfigError(
                f"unknown compression {unknown[0]!r}", field="compressions",
                expected="any of " + ", ".join(COMPRESSIONS),
            )
        if not isinstance(self.max_studies_per_patient, int) or self.max_studies_per_patient < 1:
            raise bad("max_studies_per_patient", "an integer >= 1")

    @property
    def spacing_mm(self) -> float:
        """Radiograph pixel spacing for ``image_size`` (field of view held constant)."""
        return float(self.pixel_spacing) * 512.0 / float(self.image_size)

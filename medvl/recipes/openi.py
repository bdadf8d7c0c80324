"""Open-I / Indiana University chest X-ray collection (NLM).

Expected layout, after unpacking the two archives NLM distributes::

    ROOT/
      ecgen-radiology/1.xml ... 3999.xml     from NLMCXR_reports.tgz
      images/CXR1_1_IM-0001-3001.png ...     from NLMCXR_png.tgz (any folder name
                                             under ROOT is searched once)

Each XML report holds ``AbstractText`` elements labelled COMPARISON, INDICATION,
FINDINGS and IMPRESSION, MeSH terms (``<MeSH><major>...</major><automatic>...``) and
one ``<parentImage id="CXR1_1_IM-0001-3001">`` per image. One manifest row per
image; the report id (``uId``) stands for the patient, since the collection is
de-identified to one study per patient. MeSH terms map onto the medvl vocabulary
(``normal`` -> no_finding); terms outside it are kept under ``meta.mesh``. Splits are
patient-level by hash (80/10/10).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from medvl.data.manifest import ManifestRow
from medvl.errors import DatasetRecipeError
from medvl.recipes.base import RECIPES, Recipe, patient_split

# MeSH heading (lowercase, before the first '/') -> vocabulary key
MESH_MAP = {
    "normal": "no_finding",
    "cardiomegaly": "cardiomegaly",
    "pleural effusion": "pleural_effusion",
    "pneumothorax": "pneumothorax",
    "consolidation": "consolidation",
    "pneumonia": "consolidation",
    "nodule": "nodule",
    "mass": "nodule",
    "pulmonary atelectasis": "atelectasis",
    "atelectasis": "atelectasis",
    "pulmonary edema": "edema",
    "edema": "edema",
    "medical device": "support_device",
    "catheters, indwelling": "support_device",
    "tube, inserted": "support_device",
}


def mesh_to_labels(terms: list[str]) -> dict[str, int]:
    """Map MeSH term strings (``"Cardiomegaly/mild"``) to present-finding labels."""
    labels: dict[str, int] = {}
    for term in terms:
        head = term.split("/")[0].strip().lower()
        key = MESH_MAP.get(head)
        if key:
            labels[key] = 1
    if labels.get("no_finding") and len(labels) > 1:
        del labels["no_finding"]  # "normal" alongside a finding is contradictory; trust the finding
    return labels


def parse_report(path: Path) -> dict:
    """Parse one Open-I XML report into sections, MeSH terms and image ids."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DatasetRecipeError(f"unreadable XML ({exc})", path=path, expected="an Open-I ecgen-radiology report") from None
    sections = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().lower()
        text = " ".join((node.text or "").split())
        if label and text:
            sections[label] = text
    mesh = [(n.text or "").strip() for tag in ("major", "automatic") for n in root.iter(tag) if n.text]
    images = [n.get("id") for n in root.iter("parentImage") if n.get("id")]
    uid = root.find(".//uId")
    rid = uid.get("id") if uid is not None and uid.get("id") else path.stem
    return {"id": rid, "sections": sections, "mesh": mesh, "images": images}


class OpenI(Recipe):
    name = "openi"
    description = "Open-I / Indiana University chest X-rays (XML reports with MeSH, PNG images)"

    def rows(self) -> Iterator[ManifestRow]:
        xml_dir = self.expect("ecgen-radiology", "ecgen-radiology/*.xml from NLMCXR_reports.tgz")
        pngs = {p.stem: p for p in self.root.rglob("*.png")}
        files = sorted(xml_dir.glob("*.xml"), key=lambda p: (len(p.stem), p.stem))
        if not files:
            raise DatasetRecipeError("no XML reports found", path=xml_dir, expected="NNN.xml files")
        for f in files:
            rep = parse_report(f)
            report = {k: rep["sections"][k] for k in ("findings", "impression") if k in rep["sections"]}
            labels = mesh_to_labels(rep["mesh"])
            patient = f"openi-{rep['id']}"
            split = patient_split(patient)
            for image_id in rep["images"]:
                png = pngs.get(image_id)
                if png is None:
                    continue  # reports without a shipped image are common in Open-I
                yield ManifestRow(
                    study_id=f"openi-{image_id}",
                    patient_id=patient,
                    split=split,
                    modality="CR",
                    dims=2,
                    image=self.image_ref(png),
                    report=report,
                    labels=dict(labels),
                    view=None,
                    meta=self.meta(corpus=self.name, mesh=rep["mesh"], report_file=f.name),
                )


RECIPES.add(OpenI.name, OpenI)


"""Pieces of medvl.pacs that need no server: settings, secrets, scrubbing, SR report text, checks."""

from __future__ import annotations

import pickle

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medvl.errors import ConfigError, DatasetRecipeError
from medvl.pacs.config import PacsConfig, Secret, load_pacs_config
from medvl.pacs.identity import identifiers, keyed, load_secret, scrub_text, study_ref
from medvl.pacs.ingest import check_pixels
from medvl.pacs.reports import ReportTable, report_from_sr
from medvl.pacs.testing import text_sr

URL = "http://127.0.0.1:9/dicom-web"


def test_secret_never_prints_itself() -> None:
    s = Secret("hunter2-pw")
    cfg = PacsConfig(url=URL, username="alice", password="hunter2-pw")
    for text in (str(s), repr(s), f"{s}", repr(cfg), str(cfg), str([cfg])):
        assert "hunter2" not in text
    assert cfg.password.reveal() == "hunter2-pw"
    assert pickle.loads(pickle.dumps(s)).reveal() == "hunter2-pw"


def test_settings_come_from_file_then_environment_then_options(tmp_path) -> None:
    f = tmp_path / "pacs.yaml"
    f.write_text("url: http://127.0.0.1:1/dicom-web\ntimeout: 7\nworkers: 2\n")
    f.chmod(0o600)
    cfg = load_pacs_config(f, env={"MEDVL_PACS_TOKEN": "tok-123"}, workers=3)
    assert (cfg.url, cfg.timeout, cfg.workers, cfg.auth) == ("http://127.0.0.1:1/dicom-web", 7, 3, "bearer")
    assert cfg.token.reveal() == "tok-123" and cfg.verify is True
    env = {"MEDVL_PACS_URL": URL, "MEDVL_PACS_USERNAME": "u", "MEDVL_PACS_PASSWORD": "p"}
    assert load_pacs_config(env=env).auth == "basic"


def test_world_readable_file_with_password_warns(tmp_path) -> None:
    f = tmp_path / "pacs.yaml"
    f.write_text(f"url: {URL}\nusername: u\npassword: secretpw\n")
    f.chmod(0o644)
    with pytest.warns(UserWarning, match="chmod 600"):
        load_pacs_config(f, env={})


@pytest.mark.parametrize("values, field", [
    ({"url": ""}, "url"),
    ({"url": "ftp://host/x"}, "url"),
    ({"url": "http://bob:pw@127.0.0.1/dicom-web"}, "url"),
    ({"url": URL, "token": "t", "username": "u", "password": "p"}, "token"),
    ({"url": URL, "username": "u"}, "username"),
    ({"url": URL, "timeout": 0}, "timeout"),
    ({"url": URL, "nonsense": 1}, "nonsense"),
])
def test_bad_settings_name_the_field(values, field) -> None:
    with pytest.raises(ConfigError) as err:
        load_pacs_config(env={}, **values)
    assert err.value.field == field
    assert "pw" not in str(err.value).replace("password", "")


def test_secret_file_is_private_and_stable(tmp_path) -> None:
    a = load_secret(tmp_path / "state", env={})
    assert (tmp_path / "state" / "secret").stat().st_mode & 0o077 == 0
    assert load_secret(tmp_path / "state", env={}) == a
    assert load_secret(tmp_path / "state", env={"MEDVL_PACS_SECRET": "x"}) == b"x"
    # keyed hashes depend on the secret: no one can test guessed UIDs without it
    assert keyed(a, "1.2.3") != keyed(b"other", "1.2.3")
    assert study_ref(a, "1.2.3").startswith("s-") and len(study_ref(a, "1.2.3")) == 12


def test_identifiers_and_scrubbing() -> None:
    needles = identifiers({"PatientName": "DOE^JOHN^Q", "PatientID": "MRN12345", "AccessionNumber": "7",
                           "PatientBirthDate": "19580214"})
    # one-letter name parts and short ids ("Q", "7") are not searched for: they would blank ordinary text
    assert {"DOE^JOHN^Q", "JOHN", "MRN12345", "19580214", "1958-02-14", "14/02/1958"} <= set(needles)
    assert "Q" not in needles and "7" not in needles and "DOE" in needles
    text = "Mr john Doe (MRN12345, born 14/02/1958): 7 mm nodule."
    assert scrub_text(text, needles) == "Mr ___ ___ (___, born ___): 7 mm nodule."
    # whole words only: a name part inside another word stays
    assert scrub_text("Doesn't look like Doe.", needles) == "Doesn't look like ___."


def test_text_sr_sections_scrubbed() -> None:
    study = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False), stop_before_pixels=True)
    sr = text_sr(study, {"findings": "Small left effusion.", "impression": "Effusion."},
                 extra_text=" Patient CompressedSamples seen.")
    needles = identifiers({"PatientName": str(study.PatientName)})
    assert report_from_sr([study, sr], needles) == {
        "findings": "Small left effusion. Patient ___ seen.", "impression": "Effusion."}
    assert report_from_sr([study], needles) == {}


def test_report_table_joins_and_checks(tmp_path) -> None:
    f = tmp_path / "r.csv"
    f.write_text("StudyInstanceUID,AccessionNumber,report,Pleural Effusion\n"
                 "1.2.3,,FINDINGS: Effusion. IMPRESSION: Effusion for DOE.,1\n"
                 ",ACC9,No acute disease.,0\n")
    t = ReportTable.read(f)
    assert t.lookup("1.2.3", "", ["DOE"]) == ({"findings": "Effusion.", "impression": "Effusion for ___."},
                                               {"pleural_effusion": 1})
    assert t.lookup("9.9", "ACC9") == ({"findings": "No acute disease."}, {"pleural_effusion": 0})
    assert t.lookup("9.9", "nope") is None
    bad = tmp_path / "bad.csv"
    bad.write_text("id,report\nx,y\n")
    with pytest.raises(DatasetRecipeError, match="no key column"):
        ReportTable.read(bad)
    bad.write_text("StudyInstanceUID,report,Edema\n1.2,text,maybe\n")
    with pytest.raises(DatasetRecipeError) as err:
        ReportTable.read(bad)
    assert err.value.field == "Edema" and err.value.path.endswith(":2")


def test_check_pixels_finds_truncated_data() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    assert check_pixels(ds) == ""
    ds.PixelData = ds.PixelData[:1000]
    assert "1000 of the 32768 bytes" in check_pixels(ds)
    rle = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm", download=False))
    assert check_pixels(rle) == ""  # compressed: left to the decoder
    assert np.asarray(rle.pixel_array).shape == (64, 64)


def test_storing_results_is_off_unless_configured(tmp_path) -> None:
    url = "http://127.0.0.1:1/dicom-web"
    assert load_pacs_config(env={"MEDVL_PACS_URL": url}).store is False
    assert load_pacs_config(env={"MEDVL_PACS_URL": url, "MEDVL_PACS_STORE": "1"}).store is True
    assert load_pacs_config(env={"MEDVL_PACS_URL": url, "MEDVL_PACS_STORE": "no"}).store is False
    cfg = tmp_path / "pacs.yaml"
    cfg.write_text(f"url: {url}\nstore: true\n")
    assert load_pacs_config(cfg, env={}).store is True
    with pytest.raises(ConfigError) as err:
        load_pacs_config(env={"MEDVL_PACS_URL": url, "MEDVL_PACS_STORE": "maybe"})
    assert err.value.field == "MEDVL_PACS_STORE"

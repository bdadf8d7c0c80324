"""Fetch studies from a DICOMweb server, de-identify them on the way in, cache them.

For each study: list its series (QIDO-RS), pick the one image series a manifest row needs
(and the SR series when the report comes from the PACS), refuse it before fetching when
it is larger than the configured limit, fetch its instances concurrently (WADO-RS, one
request per instance, so an interrupted run resumes instance by instance), check each
one, de-identify it with :func:`medvl.io.deid.deidentify_dataset` (PS3.15 basic profile,
as ``medvl deid``) and write it atomically under the *de-identified* UIDs::

    DIR/images/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm

A study becomes a manifest row only once all its instances are on disk, so an index
built from the manifest never holds half a study. Anything that goes wrong with one
study (404, timeout, a corrupt instance, a size limit, an identifier left after
de-identification) skips that study with one line naming it by its keyed reference.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medvl.atomic import fsync_path
from medvl.errors import PacsError
from medvl.pacs.cache import IngestCache
from medvl.pacs.client import DicomWebSource, SeriesInfo, StudyInfo
from medvl.pacs.identity import (
    dataset_attrs,
    deid_seed,
    identifiers,
    keyed,
    long_needles,
)
from medvl.pacs.reports import ReportTable, report_from_sr

# Modalities whose images are one 2D picture each (one file per manifest row).
PLANAR = {"CR", "DX", "MG", "RF", "XA", "IO", "PX", "US", "SC", "OT", "XC", "ES"}
# Series that hold no image for the model.
NON_IMAGE = {"SR", "PR", "KO", "DOC", "REG", "SEG", "RTSTRUCT", "RWV", "AU", "ECG", "HD", "FID"}
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
MIB = 1024 * 1024

Status = Literal["done", "cached", "skipped"]


class StudyRefused(Exception):
    """A study cannot be ingested; the message says why (no identifier in it)."""


@dataclass
class IngestOptions:
    """What to fetch and how to de-identify it.

    Attributes:
        modalities: image series modalities to take (empty: any image modality).
        dates: ``remove`` (basic profile) or ``shift`` (modified dates option).
        allow_burned_in: accept instances flagged BurnedInAnnotation YES.
        require_report: skip studies without a report (needed for training manifests).
        views: radiograph views preferred when a series holds several images.
        stream: fetch a series none of whose instances is cached in one WADO-RS request
            (a multipart answer read as it arrives); a series partly cached (a resumed
            ingest) is fetched instance by instance, as is what a stream leaves out.
    """

    modalities: tuple[str, ...] = ()
    dates: Literal["remove", "shift"] = "remove"
    allow_burned_in: bool = False
    require_report: bool = True
    views: tuple[str, ...] = ("PA", "AP")
    stream: bool = True


@dataclass
class StudyOutcome:
    """What happened to one study."""

    ref: str
    status: Status
    reason: str = ""
    row: dict[str, Any] | None = None
    fetched: int = 0
    cached: int = 0
    bytes: int = 0

    def line(self) -> str:
        """The one line the command prints for a skipped study."""
        return f"study {self.ref}: {self.reason}; skipped"


@dataclass
class IngestResult:
    """Outcomes of a run, in study order."""

    outcomes: list[StudyOutcome] = field(default_factory=list)
    stopped: str = ""

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [o.row for o in self.outcomes if o.row is not None]

    def summary(self) -> dict[str, Any]:
        """Counts and reasons by study reference only: safe to keep next to the data."""
        by = {s: sum(o.status == s for o in self.outcomes) for s in ("done", "cached", "skipped")}
        return {"studies": len(self.outcomes), **by,
                "instances_fetched": sum(o.fetched for o in self.outcomes),
                "instances_from_cache": sum(o.cached for o in self.outcomes),
                "bytes_fetched": sum(o.bytes for o in self.outcomes),
                "skipped_studies": [{"ref": o.ref, "reason": o.reason} for o in self.outcomes if o.status == "skipped"],
                "stopped": self.stopped}


def check_pixels(ds: Any) -> str:
    """Why an instance's pixel data cannot be right, or '' (cheap: no decoding).

    Uncompressed pixel data must hold rows x columns x samples x bytes x frames bytes.
    """
    if "PixelData" not in ds:
        return ""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax not in UNCOMPRESSED:
        return ""
    try:
        need = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
                * int(ds.get("NumberOfFrames", 1) or 1))
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        return "image attributes (Rows, Columns, BitsAllocated) missing or malformed"
    need = need // 8 if bits == 1 else need * ((bits + 7) // 8)
    have = len(ds.PixelData)
    if have < need:
        return f"pixel data holds {have} of the {need} bytes its header announces"
    return ""


class Ingester:
    """Ingest studies from ``source`` into ``out_dir``.

    Args:
        source: the server.
        out_dir: output folder (``images/``, and the cache's files).
        cache: the ingest cache.
        options: what to fetch.
        reports: a CSV of reports, or ``None`` to read text SRs from the studies.
        on_study: called with each :class:`StudyOutcome` as it finishes (progress, tests).
    """

    def __init__(self, source: DicomWebSource, out_dir: str | Path, cache: IngestCache,
                 options: IngestOptions | None = None, reports: ReportTable | None = None,
                 on_study: Callable[[StudyOutcome], None] | None = None) -> None:
        self.source = source
        self.out_dir = Path(out_dir)
        self.cache = cache
        self.options = options or IngestOptions()
        self.reports = reports
        self.on_study = on_study
        self._local = threading.local()
        self._seed = deid_seed(source.secret)
        self._stop = threading.Event()

    # -- one instance ---------------------------------------------------------------

    def _anonymizer(self) -> Any:
        a = getattr(self._local, "anonymizer", None)
        if a is None:
            from dicognito.anonymizer import Anonymizer

            # Seeded: every thread, and every rerun, maps a UID to the same pseudonym.
            a = self._local.anonymizer = Anonymizer(seed=self._seed)
        return a

    def deidentify(self, ds: Any, needles: Sequence[str]) -> Any:
        """De-identify ``ds`` in place; refuse it if a known identifier survives."""
        from medvl.io.deid import deidentify_dataset, residual_identifiers

        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES" and not self.options.allow_burned_in:
            raise StudyRefused("an instance is flagged BurnedInAnnotation YES (its pixels may show the "
                               "patient's name); pass --allow-burned-in after checking")
        own = identifiers(dataset_attrs(ds), patient_only=True)
        deidentify_dataset(ds, self._anonymizer(), dates=self.options.dates)
        left = residual_identifiers(ds, long_needles([*own, *needles]))
        if left:
            raise StudyRefused(f"an identifier is left after de-identification in {sorted(set(left))}")
        return ds

    def _fetch_instance(self, study: StudyInfo, series: SeriesInfo, sop_uid: str, position: str) -> tuple[Path, int]:
        """Fetch, check, de-identify and write one instance; ``(path, bytes fetched)``."""
        key = keyed(self.source.secret, "sop:" + sop_uid)
        hit = self.cache.instance(key)
        if hit is not None:
            return hit, 0
        if self._stop.is_set():
            raise StudyRefused("stopped")
        try:
            ds = self.source.retrieve(study, series, sop_uid)
        except PacsError:
            raise
        except Exception as exc:  # noqa: BLE001 - a payload pydicom cannot parse is a corrupt instance
            raise StudyRefused(f"instance {position} cannot be parsed ({type(exc).__name__}); "
                               "the server holds a corrupt file") from None
        return self._store(study, ds, sop_uid, key, position)

    def _store(self, study: StudyInfo, ds: Any, sop_uid: str, key: str, position: str) -> tuple[Path, int]:
        """Check, de-identify, write and record one fetched instance; ``(path, pixel bytes)``."""
        if str(ds.get("SOPInstanceUID", "")) != sop_uid or str(ds.get("StudyInstanceUID", "")) != study.uid:
            raise StudyRefused(f"instance {position}: the server sent another object than the one asked for")
        problem = check_pixels(ds)
        if problem:
            raise StudyRefused(f"instance {position} is corrupt: {problem}")
        size = len(ds.get("PixelData", b"") or b"")
        self.deidentify(ds, study.patient_needles)
        rel = Path("images") / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
        path = self.out_dir / rel
        write_instance(ds, path)
        self.cache.add_instance(key, path)
        return path, size

    def _stream(self, study: StudyInfo, series: SeriesInfo, uids: list[str], position: dict[str, str],
                pool: ThreadPoolExecutor, pending: dict[str, Future[tuple[Path, int]]]) -> None:
        """Fetch the series in one WADO-RS request; each instance goes to ``pool`` as it arrives.

        Stops quietly at a part pydicom cannot parse: the instances still missing are then
        fetched one by one, which names the bad one. At most ``2 x workers`` instances wait
        in memory for de-identification.

        Raises:
            StudyRefused: an object not in the series listing, the size limit, a stop.
            PacsError: the server failed (timeout, connection, HTTP error).
        """
        wanted = set(uids)
        limit = self.source.config.max_study_mb * MIB
        received = 0
        stream = self.source.iter_series(study, series)
        try:
            while True:
                try:
                    ds = next(stream)
                except StopIteration:
                    return
                except PacsError:
                    raise
                except Exception:  # noqa: BLE001 - an unparsable part: the rest one by one
                    return
                uid = str(ds.get("SOPInstanceUID", ""))
                if uid not in wanted or uid in pending:
                    raise StudyRefused("the server sent an object that is not in the series it listed")
                received += len(ds.get("PixelData", b"") or b"")
                if received > limit:
                    raise StudyRefused(f"its data passed the limit of {self.source.config.max_study_mb:g} MB "
                                       "(max_study_mb); fetching stopped")
                key = keyed(self.source.secret, "sop:" + uid)
                pending[uid] = pool.submit(self._store, study, ds, uid, key, position[uid])
                waiting = [f for f in pending.values() if not f.done()]
                if len(waiting) > 2 * self.source.config.workers:
                    waiting[0].result()
                if self._stop.is_set():
                    raise StudyRefused("stopped")
        finally:
            stream.close()

    # -- one study ------------------------------------------------------------------

    def _choose_series(self, study: StudyInfo, series: list[SeriesInfo]) -> SeriesInfo:
        return choose_series(series, self.options.modalities)

    def _report(self, study: StudyInfo, series: list[SeriesInfo]) -> tuple[dict[str, str], dict[str, int]]:
        if self.reports is not None:
            hit = self.reports.lookup(study.uid, study.accession, study.needles)
            return hit if hit is not None else ({}, {})
        for s in series:
            if s.modality.upper() != "SR":
                continue
            docs = self.source.retrieve_series(study, s)
            needles = set(study.needles)
            for d in docs:
                needles.update(identifiers(dataset_attrs(d)))
            report = report_from_sr(docs, sorted(needles, key=len, reverse=True))
            if report:
                return report, {}
        return {}, {}

    def _row(self, study: StudyInfo, series: SeriesInfo, paths: list[Path], report: dict[str, str],
             labels: dict[str, int]) -> dict[str, Any]:
        import pydicom

        from medvl.recipes.base import patient_split

        heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
        modality = str(heads[0].get("Modality", series.modality) or series.modality or "OT")
        if modality.upper() in PLANAR or len(paths) == 1:
            order = {v: i for i, v in enumerate(self.options.views)}
            best = min(range(len(heads)), key=lambda i: (order.get(str(heads[i].get("ViewPosition", "")), 99), i))
            head, image = heads[best], paths[best]
            dims = 3 if int(head.get("NumberOfFrames", 1) or 1) > 1 and modality.upper() not in PLANAR else 2
        else:
            head, image, dims = heads[0], paths[0].parent, 3
        study_id = str(head.StudyInstanceUID)
        patient = str(head.get("PatientID", "") or "") or study_id
        return {
            "study_id": study_id, "patient_id": patient, "split": patient_split(patient), "modality": modality,
            "dims": dims, "image": image.relative_to(self.out_dir).as_posix(), "report": report, "labels": labels,
            "annotations": [], "view": str(head.get("ViewPosition", "") or "") or None,
            "meta": {"corpus": "dicomweb", "ref": study.ref, "instances": len(paths)},
        }

    def ingest(self, study: StudyInfo, pool: ThreadPoolExecutor) -> StudyOutcome:
        """Ingest one study; never raises for a problem of this study (see the outcome)."""
        key = keyed(self.source.secret, "study:" + study.uid)
        done = self.cache.study(key)
        if done is not None and (self.out_dir / done["image"]).exists():
            return StudyOutcome(study.ref, "cached", row=done, cached=int(done["meta"].get("instances", 0)))
        outcome = StudyOutcome(study.ref, "skipped")
        try:
            series_all = self.source.series(study)
            chosen = self._choose_series(study, series_all)
            report, labels = self._report(study, series_all)
            if not report and self.options.require_report:
                where = "the reports CSV" if self.reports is not None else "a text SR in the study"
                raise StudyRefused(f"no report ({where} has none)")
            limit = self.source.config.max_instances
            if chosen.n_instances is not None and chosen.n_instances > limit:
                raise StudyRefused(f"its {chosen.modality} series has {chosen.n_instances} instances, more than "
                                   f"the limit of {limit} (max_instances); nothing fetched")
            uids = self.source.instances(study, chosen)
            if not uids:
                raise StudyRefused("its image series lists no instance")
            if len(uids) > limit:
                raise StudyRefused(f"its {chosen.modality} series has {len(uids)} instances, more than "
                                   f"the limit of {limit} (max_instances); nothing fetched")
            position = {uid: f"{i + 1} of {len(uids)}" for i, uid in enumerate(uids)}
            pending: dict[str, Future[tuple[Path, int]]] = {}
            paths: list[Path] = []
            max_bytes = self.source.config.max_study_mb * MIB
            try:
                if self.options.stream and len(uids) > 1 and not any(
                        self.cache.instance(keyed(self.source.secret, "sop:" + u)) for u in uids):
                    self._stream(study, chosen, uids, position, pool, pending)
                for uid in uids:  # a resumed series, and what a stream left out
                    if uid not in pending:
                        pending[uid] = pool.submit(self._fetch_instance, study, chosen, uid, position[uid])
                for uid in uids:
                    path, size = pending[uid].result()
                    paths.append(path)
                    outcome.bytes += size
                    outcome.fetched += size > 0
                    outcome.cached += size == 0
                    if outcome.bytes > max_bytes:
                        raise StudyRefused(f"its data passed the limit of {self.source.config.max_study_mb:g} MB "
                                           "(max_study_mb); fetching stopped")
            finally:
                for fut in pending.values():
                    fut.cancel()
            for folder in {p.parent for p in paths}:
                for leftover in folder.glob(".*.part"):  # a write a kill interrupted in an earlier run
                    leftover.unlink(missing_ok=True)
                fsync_path(folder)  # the renames, durable before the study is recorded
            outcome.row = self._row(study, chosen, paths, report, labels)
            self.cache.add_study(key, study.ref, outcome.row)
            outcome.status = "done"
        except (StudyRefused, PacsError) as exc:
            msg = str(exc.message if isinstance(exc, PacsError) else exc)
            prefix = f"study {study.ref}: "
            outcome.reason = msg.removeprefix(prefix)
        except Exception as exc:  # noqa: BLE001 - one bad study never stops the run
            outcome.reason = f"unexpected {type(exc).__name__} while ingesting"
        return outcome

    # -- a run ----------------------------------------------------------------------

    def run(self, studies: Sequence[StudyInfo], *, progress: bool = True) -> IngestResult:
        """Ingest ``studies`` (concurrently: ``config.workers`` studies and instances at a time).

        After three consecutive studies fail because the server cannot be reached, the
        run stops (``result.stopped`` says so); a rerun resumes from the cache.
        """
        from medvl.progress import progress as bar

        workers = self.source.config.workers
        result = IngestResult()
        outcomes: dict[int, StudyOutcome] = {}
        unreachable = 0
        pbar = bar(total=len(studies), desc="studies", unit="study", disable=not progress)
        with ThreadPoolExecutor(workers, thread_name_prefix="medvl-fetch") as fetch_pool, \
                ThreadPoolExecutor(workers, thread_name_prefix="medvl-study") as study_pool:
            futures = {study_pool.submit(self.ingest, s, fetch_pool): i for i, s in enumerate(studies)}
            try:
                for fut in _as_completed(futures):
                    out = fut.result()
                    outcomes[futures[fut]] = out
                    pbar.update(1)
                    if self.on_study is not None:
                        self.on_study(out)
                    unreachable = unreachable + 1 if "cannot reach the server" in out.reason else 0
                    if unreachable >= 3 and not self._stop.is_set():
                        result.stopped = "the server cannot be reached; stopped (a rerun resumes)"
                        self._stop.set()
                        for f in futures:
                            f.cancel()
            except BaseException:
                self._stop.set()
                for f in futures:
                    f.cancel()
                raise
            finally:
                pbar.close()
                result.outcomes = [outcomes[i] for i in sorted(outcomes)]
        return result


def write_instance(ds: Any, path: Path) -> None:
    """Write ``ds`` at ``path`` atomically: a temporary sibling, fsynced, renamed over it.

    Lighter than :func:`medvl.atomic.atomic_path` (no staging folder to create and remove,
    no folder fsync per file: :meth:`Ingester.ingest` syncs each series folder once before
    it records the study); a reader never sees a half-written instance either way. A kill
    can leave a ``.*.part`` sibling; the study's completion removes it before the manifest
    can name the folder.
    """
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            ds.save_as(f, enforce_file_format=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def choose_series(series: Sequence[SeriesInfo], modalities: Sequence[str] = ()) -> SeriesInfo:
    """The study's image series the manifest takes: the first radiograph series, or for
    cross-sectional modalities the one with most instances (scouts and dose reports are small).

    Raises:
        StudyRefused: no image series (of ``modalities`` when given).
    """
    wanted = {m.upper() for m in modalities}
    images = [s for s in series if s.modality.upper() not in NON_IMAGE
              and (not wanted or s.modality.upper() in wanted)]
    if not images:
        what = "/".join(sorted(wanted)) if wanted else "image"
        raise StudyRefused(f"no {what} series in the study")
    if images[0].modality.upper() in PLANAR:
        return images[0]
    return max(images, key=lambda s: (s.n_instances or 0, -(s.number or 0)))


def _as_completed(futures: dict[Future[StudyOutcome], int]) -> Any:
    from concurrent.futures import as_completed

    return (f for f in as_completed(futures) if not f.cancelled())

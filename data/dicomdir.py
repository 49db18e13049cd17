"""What a folder's DICOMDIR (the index of a CD/DVD export) lists for one series, against the files present.

Why: medseg reads a folder's files, never following the index; a copy of a disc that lost a file at either end of a
series (a copy cut short, a file the copier could not read) opened the shorter series without a word, as if complete:
the ct_head series copied as a pydicom file set, its last slice gone, opened as 11 slices of 12 (hostile25b). The index
says how many there were.
"""

from __future__ import annotations

from pathlib import Path

import pydicom

MAX_RECORDS = 1_000_000  # a DICOMDIR's records walked at most (a cycle of offsets, or a hostile index, ends there)


def _series_files(index: pydicom.Dataset, series_uid: str) -> list[tuple[str, ...]]:
    """The ReferencedFileID of each record below ``series_uid``'s series record, walking the directory's offsets
    (PS3.10 F.3: the next record at one level, the first of the level below), so a reordered index reads the same.
    Other series' records are not descended into: their values were most of the check's cost on a disc of many
    series (session 26: 2000 files in 10 series)."""
    records = {int(getattr(r, "seq_item_tell", -1)): r for r in index.get("DirectoryRecordSequence") or []}
    found: list[tuple[str, ...]] = []
    stack = [(int(index.get("OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity") or 0), None)]
    seen: set[int] = set()
    while stack and len(seen) < MAX_RECORDS:
        offset, series = stack.pop()
        while offset and offset in records and offset not in seen:
            seen.add(offset)
            record = records[offset]
            kind = record.get("DirectoryRecordType")
            uid = str(record.get("SeriesInstanceUID", "")) if kind == "SERIES" else series
            file_id = record.get("ReferencedFileID") if uid == series_uid and kind != "SERIES" else None
            if file_id is not None:
                found.append(tuple(str(p) for p in ([file_id] if isinstance(file_id, str) else file_id)))
            if uid is None or uid == series_uid:  # above the series level, or within this series
                stack.append((int(record.get("OffsetOfReferencedLowerLevelDirectoryEntity") or 0), uid))
            offset = int(record.get("OffsetOfTheNextDirectoryRecord") or 0)
    return found


def _key(parts: tuple[str, ...] | list[str]) -> str:
    """A file's path as a disc's copies may spell it: case aside (ISO 9660 names are upper case, copies often lower),
    without the ';1' version suffix some copies keep."""
    return "/".join(p.split(";")[0].lower() for p in parts)


def missing_from_index(folder: Path, series_uid: str, listing: list[Path] | None = None) -> list[str]:
    """The files that ``folder``'s DICOMDIR (or DICOMDIRs) lists under ``series_uid`` and the folder lacks; [] without
    an index, or with one pydicom cannot read (the files are what medseg reads; a damaged index tells nothing).
    ``listing``: the folder's paths as the series reader walked them (``folder.rglob("*")``), walked here otherwise.
    Why: the check walked the folder twice more on every open of a series (session 26)."""
    listing = list(folder.rglob("*")) if listing is None else listing
    missing: list[str] = []
    for index_path in (p for p in listing if p.name.upper() == "DICOMDIR" and p.is_file()):
        try:
            index = pydicom.dcmread(index_path)
            listed = _series_files(index, series_uid)
        except Exception:  # noqa: BLE001 - a damaged index is not the image; the folder's files are read as before
            continue
        if not listed:
            continue
        root = index_path.parent
        present = {_key(p.relative_to(root).parts) for p in listing if p.is_relative_to(root) and p.is_file()}
        missing += ["/".join(parts) for parts in listed if _key(parts) not in present]
    return missing

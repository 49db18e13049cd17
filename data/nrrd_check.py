"""An NRRD header's fields, read before ITK's NRRD reader sees the file, and the geometry it may not guess.

Why: ITK's NrrdImageIO fills in what the header leaves out or cannot hold, without a word: an image axis whose
``space directions`` row is ``none`` or too long for a double, or whose ``spacings`` is ``nan``, opened 1 mm thick;
a ``space`` that is no patient space (``scanner-xyz``, ``3D-left-handed``) was taken as left-posterior-superior (a
left-handed frame then lies mirrored); ``spaceunits`` (teem's other spelling of ``space units``) passed the mm check.
Its own refusals said only "not a readable NRRD file"; ``itk_reason`` gives teem's reason and the field (session 25).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from data.readers import SPACING_RANGE_MM
from data.study_errors import StudyError, first_line
from data.untrusted import NRRD_HEADER_BYTES

# teem's names (and abbreviations) of the spaces whose axes are the patient's; ITK converts these to LPS
PATIENT_SPACES = {"left-posterior-superior": "LPS", "lps": "LPS", "right-anterior-superior": "RAS", "ras": "RAS",
                  "left-anterior-superior": "LAS", "las": "LAS"}
IMAGE_AXIS_KINDS = ("domain", "space", "time")  # teem's kinds of an axis of the grid (others are a voxel's values)
PERPENDICULAR_TOLERANCE = 1e-3


def header_fields(path: Path) -> dict[str, str]:
    """The header's ``field: value`` lines, keyed as teem matches them (lower case, spaces removed: ``space units``
    and ``spaceunits`` are one field); the first of a repeated field (ITK refuses the file then)."""
    with open(path, "rb") as f:
        head = f.read(NRRD_HEADER_BYTES)
    ends = [i for i in (head.find(b"\n\n"), head.find(b"\r\n\r\n")) if i >= 0]
    head = head[: min(ends)] if ends else head
    fields: dict[str, str] = {}
    for line in head.decode("latin-1").splitlines()[1:]:  # the first line is the magic
        if line.startswith("#") or ":=" in line.partition(": ")[0]:
            continue  # a comment, a key/value pair
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(re.sub(r"\s+", "", key).lower(), value.strip())
    return fields


def check_geometry(fields: dict[str, str], name: str) -> None:
    """StudyError for a place ITK would guess: units other than mm, a space that is not the patient's, no geometry at
    all, an image axis without a direction or spacing, a direction of no usable length, or directions that are not
    perpendicular."""
    units = fields.get("spaceunits")
    if units is not None and any(u.strip('"').strip().lower() != "mm" for u in units.split()):
        # ITK ignores the field: an NRRD in metres opened 1000 times too small, and its label was written in mm
        raise StudyError(f"{name}: space units {units}; expected millimetres (\"mm\") on every axis")
    space = fields.get("space")
    if space is not None and space.lower() not in PATIENT_SPACES:
        raise StudyError(f"{name}: space {space}: expected a patient space (left-posterior-superior, "
                         "right-anterior-superior or left-anterior-superior); any other is read as "
                         "left-posterior-superior, so where the image lies, and its left and right, would be guessed")
    kinds = fields.get("kinds", "").split()

    def image_axis(axis: int) -> bool:
        return axis >= len(kinds) or kinds[axis].lower() in IMAGE_AXIS_KINDS

    if "spacedirections" not in fields and "spacings" not in fields:
        # unu's plain output opened at 1 x 1 x 1 mm, identity, as if measured: the label server has no "size unknown"
        # (a picture's, which the UI says), and 3D Slicer always writes the three fields (session 25's leftover)
        raise StudyError(f"{name}: no space directions (nor spacings): the voxels' size and where the image lies are "
                         "not in the file (it would open at a guessed 1 x 1 x 1 mm); expected the geometry 3D Slicer "
                         "writes: space, space directions and space origin")
    directions = []
    if "spacedirections" in fields:
        rows = re.findall(r"\(([^)]*)\)|(none)", fields["spacedirections"], re.IGNORECASE)
        for axis, (vector, none) in enumerate(rows):
            if not image_axis(axis):
                continue
            if none:
                raise StudyError(f"{name}: space directions: axis {axis + 1} is 'none', but it is an axis of the "
                                 "image's grid; expected its direction in mm, e.g. (0,0.8,0) (its spacing would be "
                                 "guessed as 1 mm)")
            try:
                values = [float(v) for v in vector.split(",")]
            except ValueError:
                continue  # not numbers: ITK refuses the field, and ``itk_reason`` names it
            lo, hi = SPACING_RANGE_MM
            if not all(map(math.isfinite, values)) or not lo <= math.sqrt(sum(v * v for v in values)) <= hi:
                raise StudyError(f"{name}: space directions: axis {axis + 1} ({vector}): expected a direction of "
                                 f"finite numbers whose length, the spacing, is {lo:g} to {hi:g} mm")
            directions.append([v / math.sqrt(sum(w * w for w in values)) for v in values])
    elif "spacings" in fields:
        for axis, value in enumerate(fields["spacings"].split()):
            if image_axis(axis) and value.lower() == "nan":
                raise StudyError(f"{name}: spacings {fields['spacings']}: axis {axis + 1} has none (nan), but it is an "
                                 "axis of the image's grid; expected its spacing in mm (it would be guessed as 1 mm)")
    if any(abs(sum(a * b for a, b in zip(u, v))) > PERPENDICULAR_TOLERANCE
           for i, u in enumerate(directions) for v in directions[i + 1:]):
        # ITK keeps sheared or parallel axes as they are; the NIfTI reader refuses shear
        raise StudyError(f"{name}: the NRRD's space directions are not perpendicular (shear); resample the image "
                         "first (a NIfTI with shear is refused too)")


def itk_reason(error: BaseException, path: Path, name: str) -> str:
    """Teem's reason for refusing a file, without its function names or the server's path, with the field it
    could not parse: ``its kinds field 'domain domain': couldn't extract string for kind 3 of 3``."""
    said = re.sub(r"^(ITK ERROR: )?(\[nrrd\] \w+: |NrrdImageIO: \w+: )", "", first_line(error))
    field = re.search(r"trouble parsing (.+?) info \|(.{0,80})", str(error))
    said = f"its {field[1]} field {field[2].split('|')[0]!r}: {said}" if field else said
    return said.replace(str(path), name).replace(path.name, name)

"""The evaluation manifest: a CSV of (image, label, slice) cases, and loading one case as a 2D slice.

Columns (paths relative to the manifest's folder):

* required: ``case_id``, ``image``, ``label``;
* optional: ``slice_index`` (k of a 3D study as ``SimpleITK.GetArrayFromImage(volume)[k]``;
  required for 3D; a one-slice label of a 3D image is the label of that slice, and must lie there
  when its file places it), ``label_values`` (``|``-separated label values forming the structure;
  default: any non-zero), ``structure`` (its name; default ``label``), ``transform`` (``T`` or
  ``rot90``, below), ``norm_lo``/``norm_hi`` (intensity window; default: the study's default
  window, see ``data.windowing``);
* any other column is an attribute (modality, site, sex...) usable with ``--group-by``.

``transform`` names how the shared data's 2D slice was cut from the NIfTI array ``vol`` as
nibabel loads it (``[i, j, k]``): ``T`` = ``vol[:, :, k].T`` and ``rot90`` =
``np.rot90(vol[:, :, k])``. SimpleITK's slice ``s = GetArrayFromImage(img)[k]`` is
``vol[:, :, k].T`` (rows j, columns i), so ``T`` is ``s`` as is and ``rot90`` is ``s[::-1, :]``
(a flip of the rows; checked against nibabel in the tests). Neither swaps the axes, so the
row spacing is the j spacing and the column spacing the i spacing of the image geometry.
"""

from __future__ import annotations

import csv
import io
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.pictures import TRANSPARENCY_IGNORED, exif_mismatch, refuse_lossy_mask, visible_pixels
from data.readers import StudyError, read_study
from data.study_errors import without_cli_advice
from data.volume import Volume
from data.windowing import Window, default_window, slice_to_rgb

REQUIRED = ("case_id", "image", "label")
KNOWN = (*REQUIRED, "slice_index", "label_values", "structure", "transform", "norm_lo", "norm_hi")
TRANSFORMS = ("", "none", "T", "rot90")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file, the row and the column."""


@dataclass(frozen=True)
class CaseSpec:
    """One manifest row, parsed but not loaded. ``line`` is its line in the file (header = 1; the
    last line of a row whose quoted cell holds a line break)."""

    case_id: str
    image: Path
    label: Path
    line: int
    slice_index: int | None = None
    label_values: tuple[float, ...] | None = None
    structure: str = "label"
    transform: str = ""
    window: tuple[float, float] | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    def row(self) -> dict[str, str]:
        """Attributes plus the structure, as a flat row for grouping."""
        return {**self.attributes, "structure": self.structure}


@dataclass(frozen=True)
class LoadedCase:
    """A case ready for a model: image (H, W, 3) uint8, ground truth (H, W) bool, spacing (row_mm, col_mm)."""

    spec: CaseSpec
    image: np.ndarray
    gt: np.ndarray
    spacing: tuple[float, float]


def _where(manifest: Path, line: int, column: str | None = None) -> str:
    return f"{manifest} line {line}" + (f", column {column!r}" if column else "")


def _float(value: str, manifest: Path, line: int, column: str) -> float:
    try:
        out = float(value)
    except ValueError:
        raise ManifestError(f"{_where(manifest, line, column)}: {value!r} is not a number") from None
    if not math.isfinite(out):
        raise ManifestError(f"{_where(manifest, line, column)}: {value!r} is not a finite number")
    return out


_NO_CELL = object()  # csv.DictReader's ``restval``: a column the row has no cell for


def read_manifest(path: str | Path) -> tuple[list[CaseSpec], list[str]]:
    """Parse MANIFEST.csv -> (cases in file order, attribute column names). Reads no images."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:  # Excel's plain "CSV" on Windows is cp1252: the error named no file
        line = data[: e.start].count(b"\n") + 1
        raise ManifestError(f"{path} line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the manifest as "
                            "UTF-8 (in Excel: 'CSV UTF-8 (Comma delimited)')") from None
    with io.StringIO(text, newline="") as f:
        # strict: an unclosed quote raised nothing and swallowed the rest of the file into one cell, which read as
        # "column 'label': empty" (session 22)
        reader = csv.DictReader(f, strict=True, restval=_NO_CELL)
        header = [h.strip() for h in (reader.fieldnames or [])]
        # csv.DictReader keeps a repeated column's last cell: two 'label' columns (an edited export) scored the case
        # against the second without a word
        repeated = sorted({h for h in header if h and header.count(h) > 1})
        if repeated:
            at = ", ".join(f"{h!r} (columns {', '.join(str(n + 1) for n, x in enumerate(header) if x == h)})"
                           for h in repeated)
            raise ManifestError(f"{path}: the header repeats {at}; each column must be named once")
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ManifestError(
                f"{path}: missing column(s) {', '.join(missing)}; a manifest needs {', '.join(REQUIRED)} "
                f"(found: {', '.join(header) or 'no header'})" + _other_delimiter(header)
            )
        attributes = [h for h in header if h not in KNOWN]
        cases: list[CaseSpec] = []
        seen: dict[str, int] = {}
        for raw in _rows(reader, path, text):
            line = reader.line_num  # counts skipped blank lines and line breaks inside quoted cells
            extra = [v for v in raw.get(None) or () if v.strip()]  # cells past the header's columns
            if extra:
                raise ManifestError(
                    f"{path} line {line}: {len(header) + len(raw[None])} cells, but the header names {len(header)} "
                    f"columns (extra: {', '.join(repr(v[:40]) for v in extra[:3])}); quote a cell that holds a "
                    "comma, or name the column in the header")
            # a row of fewer cells: a comma lost, so the cells after it are read under the wrong columns, or a
            # column left out; DictReader filled the missing ones in without a word (session 23)
            short = [k.strip() for k, v in raw.items() if v is _NO_CELL and k is not None and k.strip()]
            if short:
                cells = sum(v is not _NO_CELL for k, v in raw.items() if k is not None)
                raise ManifestError(
                    f"{path} line {line}: {cells} cells, but the header names {len(header)} columns (missing: "
                    f"{', '.join(repr(c) for c in short[:3])}{', ...' if len(short) > 3 else ''}); give every column "
                    "a cell, an empty one between two commas (a,b,,d), so that each cell stays under its column")
            row = {k.strip(): ("" if v is _NO_CELL else v.strip()) for k, v in raw.items() if k is not None}
            cases.append(_parse_row(row, path, line, attributes))
            cid = cases[-1].case_id
            if cid in seen:
                raise ManifestError(f"{_where(path, line, 'case_id')}: {cid!r} repeats line {seen[cid]}; ids must be unique")
            seen[cid] = line
    if not cases:
        raise ManifestError(f"{path}: the manifest has a header but no cases")
    return cases, attributes


def _rows(reader: csv.DictReader, path: Path, text: str) -> Iterator[dict]:
    """The reader's rows; a CSV syntax error as one line naming the line where its row begins."""
    while True:
        before = reader.line_num
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            lines = text.splitlines()
            start = before + 1
            while start < len(lines) and not lines[start - 1].strip():  # DictReader skips blank lines
                start += 1
            if "unexpected end of data" in str(e):
                raise ManifestError(f"{path} line {start}: a quote (\") opened in this row is never closed, so the "
                                    "rest of the file would be one cell; close the quote or remove it") from None
            raise ManifestError(f"{path} line {start}: not valid CSV ({e}); a cell with a quote must be "
                                "quoted whole, its quotes doubled (\"a \"\"b\"\" c\")") from None


OTHER_DELIMITERS = {";": "semicolons (a European Excel's CSV)", "\t": "tabs", "|": "bars"}


def _other_delimiter(header: list[str]) -> str:
    """The fix for a header that is one cell holding the required names between another separator: Excel saves "CSV"
    with semicolons where the decimal mark is a comma, and the refusal listed 'case_id;image;label' as found without
    saying why it was not read (session 21)."""
    if len(header) != 1:
        return ""
    for mark, name in OTHER_DELIMITERS.items():
        if all(c in [h.strip() for h in header[0].split(mark)] for c in REQUIRED):
            return (f"; its columns are separated by {name}, not commas: save it as comma-separated CSV (in Excel: "
                    "'CSV UTF-8 (Comma delimited)')")
    return ""


def _parse_row(row: dict[str, str], manifest: Path, line: int, attributes: list[str]) -> CaseSpec:
    for col in REQUIRED:
        if not row.get(col):
            raise ManifestError(f"{_where(manifest, line, col)}: empty; every case needs {', '.join(REQUIRED)}")
    base = manifest.parent
    if _same_file(base / row["image"], base / row["label"]):  # scored against every non-zero voxel of the image
        raise ManifestError(f"{_where(manifest, line, 'label')}: {row['label']!r} is the image itself (column 'image' "
                            f"{row['image']!r}); the label must be the ground-truth mask file")
    slice_index = None
    if row.get("slice_index"):
        v = _float(row["slice_index"], manifest, line, "slice_index")
        if v != int(v) or v < 0:
            raise ManifestError(f"{_where(manifest, line, 'slice_index')}: {row['slice_index']!r} is not a slice index >= 0")
        slice_index = int(v)
    label_values = None
    if row.get("label_values"):
        label_values = tuple(
            _float(p.strip(), manifest, line, "label_values") for p in row["label_values"].split("|") if p.strip()
        )
        if not label_values:
            raise ManifestError(f"{_where(manifest, line, 'label_values')}: no values in {row['label_values']!r}")
    transform = row.get("transform", "")
    if transform not in TRANSFORMS:
        raise ManifestError(f"{_where(manifest, line, 'transform')}: {transform!r} is unknown; use T, rot90 or leave empty")
    lo, hi = row.get("norm_lo", ""), row.get("norm_hi", "")
    window = None
    if lo or hi:
        if not (lo and hi):
            raise ManifestError(f"{_where(manifest, line, 'norm_lo' if not lo else 'norm_hi')}: give both norm_lo and norm_hi")
        window = (_float(lo, manifest, line, "norm_lo"), _float(hi, manifest, line, "norm_hi"))
        if not window[1] > window[0]:
            raise ManifestError(f"{_where(manifest, line, 'norm_hi')}: norm_hi {hi} must be above norm_lo {lo}")
    return CaseSpec(
        case_id=row["case_id"],
        image=base / row["image"],
        label=base / row["label"],
        line=line,
        slice_index=slice_index,
        label_values=label_values,
        structure=row.get("structure") or "label",
        transform="" if transform == "none" else transform,
        window=window,
        attributes={a: row.get(a, "") for a in attributes},
    )


def _same_file(a: Path, b: Path) -> bool:
    """Whether two manifest paths name one file: the same path, or a link or another spelling of it."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except (OSError, ValueError):  # a NUL byte or an unreadable folder: the file is refused when it is read
        return False


def apply_transform(slice_2d: np.ndarray, transform: str) -> np.ndarray:
    """SimpleITK slice (rows j, columns i[, c]) -> the manifest's 2D view (see the module doc)."""
    if transform in ("", "none", "T"):
        return np.ascontiguousarray(slice_2d)
    if transform == "rot90":
        return np.ascontiguousarray(slice_2d[::-1])
    raise ValueError(f"unknown transform {transform!r}; use T, rot90 or nothing")


def _slice_on(image: Volume, label: Volume) -> int | None:
    """The image slice a one-slice label lies on (its origin at that slice's, the same pixels and in-plane axes, to
    the tolerances of ``Volume.grid_difference``), None when on none."""
    if label.slice_shape != image.slice_shape or \
            np.abs(np.subtract(label.spacing[:2], image.spacing[:2])).max() > 1e-3 * max(1.0, *image.spacing) or \
            np.abs(label.direction_matrix[:, :2] - image.direction_matrix[:, :2]).max() > 1e-4:
        return None
    index = np.linalg.solve(image.direction_matrix * np.asarray(image.spacing), np.subtract(label.origin, image.origin))
    k = int(round(float(index[2])))
    if not 0 <= k < image.num_slices or \
            np.abs(image.index_to_physical(np.array([0.0, 0.0, k])) - np.asarray(label.origin)).max() > 1e-2:
        return None
    return k


class CaseLoader:
    """Loads cases, reading each study file once (many rows share one volume)."""

    def __init__(self, manifest: str | Path):
        self.manifest = Path(manifest)
        self._volumes: dict[Path, Volume] = {}

    def _volume(self, path: Path, spec: CaseSpec, column: str) -> Volume:
        if path not in self._volumes:
            try:
                with warnings.catch_warnings():
                    if column == "label":  # its alpha is applied (``_painted``), not ignored as the note says
                        warnings.filterwarnings("ignore", message=f".*{re.escape(TRANSPARENCY_IGNORED)}")
                    self._volumes[path] = read_study(path)
            except StudyError as e:
                # eval and batch have no --allow-uneven: a series with a slice missing said to pass it (session 24)
                said = without_cli_advice(str(e))
                raise ManifestError(f"{_where(self.manifest, spec.line, column)}: {said}") from e
        return self._volumes[path]

    def _slice_index(self, volume: Volume, spec: CaseSpec, column: str) -> int:
        k = spec.slice_index
        if k is None:
            if volume.is_2d:
                return 0
            raise ManifestError(
                f"{_where(self.manifest, spec.line, 'slice_index')}: {column} is 3D ({volume.num_slices} slices); "
                f"give slice_index (0..{volume.num_slices - 1})"
            )
        if not 0 <= k < volume.num_slices:
            raise ManifestError(
                f"{_where(self.manifest, spec.line, 'slice_index')}: {k} is out of range for {column} "
                f"(slices 0..{volume.num_slices - 1})"
            )
        return k

    def _label_slice(self, image_vol: Volume, label_vol: Volume, spec: CaseSpec, k: int) -> int:
        """The label's slice for image slice ``k``. A one-slice label of a 3D image is the annotation of slice
        ``slice_index``: it was read as a study of its own, so slice_index 20 was refused as "20 is out of range for
        label (slices 0..0)" and only image slice 0 could be scored, against a label saved from any slice
        (session 22). Where both files place their pixels, the label must lie on that slice; the line names the
        slice it does lie on."""
        if label_vol.num_slices != 1 or image_vol.is_2d:
            return self._slice_index(label_vol, spec, "label")
        if not (image_vol.size_is_physical and label_vol.size_is_physical):
            return 0  # a PNG mask has no place: matched by shape
        on = _slice_on(image_vol, label_vol)
        if on == k:
            return 0
        where = _where(self.manifest, spec.line, "slice_index")
        if on is None:
            fault = ("lies on no slice of the image (origin " + ", ".join(f"{v:.4g}" for v in label_vol.origin)
                     + f" mm, pixels {label_vol.spacing[0]:.4g} x {label_vol.spacing[1]:.4g} mm); give the label of "
                     f"image slice {k} on the image's grid")
        else:
            fault = f"lies on image slice {on}: set slice_index to {on}, or give the label of slice {k}"
        raise ManifestError(f"{where}: {k}, but the label {spec.label.name} (one slice) {fault}")

    def _painted(self, label_vol: Volume, labels: np.ndarray, spec: CaseSpec) -> np.ndarray:
        """A picture label's slice as annotated: a JPEG is refused (its compression's faint pixels around every edge
        counted as ground truth: Dice was scored against them), and the fully transparent pixels of a PNG are
        unlabelled (read as an image, a label on a transparent layer whose hidden pixels are white was the whole
        plane). The same rules as the UI's mask file and ``oneshot --ref-mask`` (``data.pictures``)."""
        fmt = label_vol.source.format if label_vol.source is not None else ""
        try:
            if fmt == "jpeg":
                refuse_lossy_mask(spec.label, "JPEG")
            visible = visible_pixels(spec.label) if fmt == "png" else None
        except StudyError as e:
            raise ManifestError(f"{_where(self.manifest, spec.line, 'label')}: {e}") from e
        if visible is None:
            return labels
        return np.where(visible[..., None] if labels.ndim == 3 else visible, labels, 0)

    def _check_values_present(self, label_vol: Volume, spec: CaseSpec) -> None:
        """label_values none of which the label holds anywhere (a mask saved as 0/255 under label_values 1): the run
        stopped at "the ground truth is empty on this slice", naming neither the column nor the values there are."""
        array = np.asarray(label_vol.array)
        if np.isin(array, spec.label_values).any():
            return  # the values are in the label, not on this slice: the runner says so for the slice
        held = np.unique(array)
        shown = ", ".join(f"{v:g}" for v in held[:10].tolist()) + (f" and {held.size - 10} more" if held.size > 10 else "")
        values = "|".join(f"{v:g}" for v in spec.label_values)
        raise ManifestError(f"{_where(self.manifest, spec.line, 'label_values')}: {values}: the label holds none of "
                            f"these values (it holds {shown}); give the values the structure has in the label")

    def _check_whole_values(self, labels: np.ndarray, spec: CaseSpec, k: int) -> None:
        """A label slice of fractional values is refused. Why: a label resampled with linear interpolation (or a
        probability map) was ground truth wherever non-zero, each blurred edge counted as labelled (session 30)."""
        if not np.issubdtype(labels.dtype, np.floating):
            return
        finite = labels[np.isfinite(labels)]
        fractions = finite[finite != np.round(finite)]
        if fractions.size:
            raise ManifestError(f"{_where(self.manifest, spec.line, 'label')}: {spec.label} holds fractional values on "
                                f"slice {k} ({float(fractions[0]):g}): a probability map or a label resampled with "
                                "interpolation; expected whole label values (resample labels with nearest neighbour)")

    def load(self, spec: CaseSpec) -> LoadedCase:
        image_vol = self._volume(spec.image, spec, "image")
        label_vol = self._volume(spec.label, spec, "label")
        k = self._slice_index(image_vol, spec, "image")
        kl = self._label_slice(image_vol, label_vol, spec, k)
        if label_vol.slice_shape != image_vol.slice_shape:
            raise ManifestError(
                f"{_where(self.manifest, spec.line, 'label')}: label slices are {label_vol.slice_shape} (H, W) "
                f"but image slices are {image_vol.slice_shape}"
            )
        turns = (image_vol.source.exif_orientation, label_vol.source.exif_orientation)
        if turns[0] != turns[1]:  # pictures open turned by their EXIF tag: a label without it lay turned on a square one
            raise ManifestError(f"{_where(self.manifest, spec.line, 'label')}: " + exif_mismatch("image", "label", *turns))
        if image_vol.grid_to_compare(label_vol) and (differs := image_vol.grid_difference(label_vol)):
            # both 3D share slice_index: a label of another slab, shifted or flipped gave another place's truth
            raise ManifestError(f"{_where(self.manifest, spec.line, 'label')}: the label is not on the image's grid: "
                                f"{differs}")
        window = Window(*spec.window, name="manifest") if spec.window else default_window(image_vol)
        image = apply_transform(slice_to_rgb(image_vol, k, window), spec.transform)
        labels = self._painted(label_vol, label_vol.slice(kl), spec)
        if label_vol.is_rgb:
            if not (labels[..., :1] == labels[..., :3]).all():
                raise ManifestError(f"{_where(self.manifest, spec.line, 'label')}: a colour label image; expected grey levels")
            labels = labels[..., 0]
        labels = apply_transform(labels, spec.transform)
        self._check_whole_values(labels, spec, kl)
        gt = np.isin(labels, spec.label_values) if spec.label_values else labels != 0
        if spec.label_values and not gt.any():
            self._check_values_present(label_vol, spec)
        spacing = (float(image_vol.spacing[1]), float(image_vol.spacing[0]))
        return LoadedCase(spec=spec, image=image, gt=np.ascontiguousarray(gt), spacing=spacing)

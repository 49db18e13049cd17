"""`Volume`: voxels plus the geometry and identity that must survive every read and write.

Conventions (the same as SimpleITK / ITK / DICOM, i.e. LPS patient coordinates):

* ``array`` is indexed ``[k, j, i]`` (slice, row, column), exactly what
  ``SimpleITK.GetArrayFromImage`` returns; an RGB study has a trailing channel axis
  ``[k, j, i, c]``. A 2D image is a volume with one slice (``k = 0``).
* ``spacing`` and ``origin`` are in millimetres, ordered ``(i, j, k)`` = (x, y, z).
* ``direction`` is the 3x3 direction-cosine matrix, row-major, columns = the physical
  directions of the i, j, k axes in LPS (ITK's ``GetDirection``).

3D Slicer and DICOM use LPS on disk; NIfTI stores RAS, and SimpleITK converts on read
and write, so keeping the ITK convention here keeps every export aligned voxel for voxel.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk


# in ``SourceRef.geometry`` of a multi-frame DICOM that does not place its frames (``Volume.slice_spacing_is_physical``)
FRAMES_NOT_PLACED = "frames not placed"
# in ``SourceRef.geometry`` of a single placed DICOM slice that gives no thickness (``Volume.slice_spacing_is_physical``)
THICKNESS_UNKNOWN = "slice thickness unknown"
# in ``SourceRef.geometry`` of a series split into enhanced multi-frame files, stacked by their frames' positions
SPLIT_ENHANCED = "per-frame functional groups of "


@dataclass(frozen=True)
class SourceRef:
    """Where a volume came from; DICOM identifiers when the source was DICOM."""

    path: str = ""
    format: str = ""  # "nifti" | "dicom-series" | "dicom" | "png" | "jpeg" | "dicom-seg"
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    sop_instance_uids: tuple[str, ...] = ()  # one per slice k, in array order
    sop_class_uid: str | None = None
    files: tuple[str, ...] = ()  # one per slice k for a DICOM series, in array order
    geometry: str = ""  # where spacing/origin/direction came from, e.g. "sform (sform_code 1)"
    # a NIfTI source's (sform_code, qform_code, intent_code): label maps written of it keep its space (MNI 4 ...)
    nifti_codes: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()  # repairs the user asked for (e.g. --allow-uneven) or doubts, shown with the study
    exif_orientation: int = 1  # a picture's EXIF Orientation (1-8), which it was turned by when read; 1: as stored


@dataclass(frozen=True)
class Volume:
    """An image study: voxels ``[k, j, i(, c)]`` with full geometry. See the module doc."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    modality: str = "OT"  # DICOM modality code: CT, MR, US, OT (other / photo)
    source: SourceRef = field(default_factory=SourceRef)

    def __post_init__(self) -> None:
        if self.array.ndim not in (3, 4):
            raise ValueError(f"Volume.array must be [k, j, i] or [k, j, i, c], got shape {self.array.shape}")
        if self.array.ndim == 4 and self.array.shape[-1] not in (3, 4):
            raise ValueError(f"Volume.array channel axis must hold 3 (RGB) values, got shape {self.array.shape}")
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError("Volume geometry needs 3 spacings, 3 origin values and 9 direction cosines")

    # --- shape -----------------------------------------------------------------------------
    @property
    def num_slices(self) -> int:
        return int(self.array.shape[0])

    @property
    def slice_shape(self) -> tuple[int, int]:
        """(rows H, columns W) of one slice."""
        return int(self.array.shape[1]), int(self.array.shape[2])

    @property
    def is_rgb(self) -> bool:
        return self.array.ndim == 4

    @property
    def is_2d(self) -> bool:
        return self.num_slices == 1

    def slice(self, k: int) -> np.ndarray:
        """Slice k as stored: (H, W) or (H, W, 3). Raises IndexError naming the valid range."""
        if not 0 <= k < self.num_slices:
            raise IndexError(f"slice {k} is out of range: this study has slices 0..{self.num_slices - 1}")
        return self.array[k]

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """(row_mm, col_mm) of the pixels of :meth:`slice` (rows run along j, columns along i)."""
        return float(self.spacing[1]), float(self.spacing[0])

    # --- geometry --------------------------------------------------------------------------
    @property
    def size_is_physical(self) -> bool:
        """Whether the voxel size is the file's own, so areas and volumes mean mm² and mL. A picture (PNG/JPEG) is
        in pixels; a DICOM image with no geometry and no PixelSpacing (an uncalibrated ultrasound or secondary
        capture frame) opens with GDCM's 1 mm default, which is no measurement either; one with PixelAspectRatio
        opens at relative pixel sizes (1 x 2), its shape, not mm."""
        if self.source.geometry.startswith("none (pixels"):  # a picture; a DICOM sized by PixelAspectRatio alone
            return False
        if self.source.geometry.startswith("none (identity)"):
            return tuple(float(s) for s in self.spacing[:2]) != (1.0, 1.0)
        return True

    @property
    def slice_spacing_is_physical(self) -> bool:
        """Whether the distance between slices is the file's own too, so a volume means mL and a plane across the
        slices mm². A multi-frame DICOM placed neither by ImageOrientationPatient nor by functional groups (an
        ultrasound or XA cine, a multi-frame secondary capture) holds its frames' order, not their distance: GDCM
        puts them 1 mm apart (or FrameTime's milliseconds), and a label's volume in mL was computed from that. A single
        placed slice with neither SliceThickness nor SpacingBetweenSlices is GDCM's 1 mm thick: no measurement either."""
        return self.size_is_physical and FRAMES_NOT_PLACED not in self.source.geometry \
            and THICKNESS_UNKNOWN not in self.source.geometry

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def index_to_physical(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous index (..., 3) in (i, j, k) order -> LPS millimetres (..., 3)."""
        ijk = np.asarray(ijk, dtype=float)
        return np.asarray(self.origin) + (ijk * np.asarray(self.spacing)) @ self.direction_matrix.T

    def orientation_code(self) -> str:
        """Three-letter ITK/DICOM orientation code (e.g. 'LPS', 'RAI')."""
        return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(self.direction)

    def with_array(self, array: np.ndarray, **changes) -> "Volume":
        """Same geometry and source, new voxels (e.g. a label map on this grid)."""
        if array.shape[:3] != self.array.shape[:3]:
            raise ValueError(f"array shape {array.shape[:3]} does not match the volume grid {self.array.shape[:3]}")
        return replace(self, array=array, **changes)

    def grid_to_compare(self, other: "Volume") -> bool:
        """Whether ``other`` (an annotation) must lie on this volume's grid (``grid_difference``): both 3D; both 2D
        when both carry their size from their files (a 2D label of one slice of a 3D image is matched by shape and
        slice elsewhere). Why: 2D ones were never compared (a PNG mask has no place), so a 2D NIfTI label moved 10 mm
        or with pixels twice the size was taken as the image's truth."""
        if self.is_2d != other.is_2d:
            return False
        return not self.is_2d or (self.size_is_physical and other.size_is_physical)

    def grid_difference(self, other: "Volume") -> str:
        """'' when ``other`` (a label) lies on this volume's grid, else what differs, e.g. ``origin (95, 130, 0)
        vs (90, 125, -5)``: a label of another slab, shifted or flipped has slice k somewhere else. Tolerances
        allow float32 header storage: spacing 1e-3 of the largest spacing, origin 0.01 mm, direction 1e-4."""
        def fmt(values) -> str:
            return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"

        if other.array.shape[:3] != self.array.shape[:3]:
            return f"grid {other.array.shape[:3]} vs {self.array.shape[:3]} (k, j, i)"
        tol = 1e-3 * max(1.0, *(abs(s) for s in self.spacing))
        for name, limit in (("spacing", tol), ("origin", 1e-2), ("direction", 1e-4)):
            a, b = getattr(other, name), getattr(self, name)
            if np.abs(np.subtract(a, b)).max() > limit:
                return f"{name} {fmt(a)} vs {fmt(b)}"
        return ""

    # --- SimpleITK bridge ------------------------------------------------------------------
    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array, isVector=self.is_rgb)
        self.copy_geometry_to(image)
        return image

    def copy_geometry_to(self, image: sitk.Image) -> None:
        image.SetSpacing(tuple(float(s) for s in self.spacing))
        image.SetOrigin(tuple(float(o) for o in self.origin))
        image.SetDirection(tuple(float(d) for d in self.direction))

    @classmethod
    def from_sitk(cls, image: sitk.Image, *, modality: str = "OT", source: SourceRef | None = None) -> "Volume":
        """Wrap a SimpleITK image (2D images become one slice; geometry padded to 3D)."""
        array = sitk.GetArrayFromImage(image)
        dim = image.GetDimension()
        if dim == 2:
            array = array[None]
            sx, sy = image.GetSpacing()
            ox, oy = image.GetOrigin()
            d = image.GetDirection()
            spacing, origin = (sx, sy, 1.0), (ox, oy, 0.0)
            direction = (d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0)
        elif dim == 3:
            spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
        else:
            raise ValueError(f"only 2D and 3D images are supported, got a {dim}D image")
        return cls(
            array=array,
            spacing=tuple(float(s) for s in spacing),
            origin=tuple(float(o) for o in origin),
            direction=tuple(float(x) for x in direction),
            modality=modality,
            source=source or SourceRef(),
        )

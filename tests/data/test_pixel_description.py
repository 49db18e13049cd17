"""DICOM files whose pixel description (PhotometricInterpretation, SamplesPerPixel, BitsAllocated, frames, the
transfer syntax) does not fit the pixel bytes, or that the decoder here gets wrong: each is one StudyError line
naming the field, never a picture of noise opened as if valid (session 15's adversarial pass)."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from data.readers import StudyError, read_study
from tests.conftest import SAMPLES

CT_FILE = sorted((SAMPLES / "ct_head_0051_series").glob("*.dcm"))[0]
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _edited_ct(tmp_path: Path, name: str, edit) -> Path:
    ds = pydicom.dcmread(CT_FILE)
    edit(ds)
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=False)
    return path


def _read(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_study(path)


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL_422"])
def test_a_colour_photometric_on_one_sample_grey_data_is_refused_naming_both_fields(tmp_path, photometric):
    """GDCM trusted the name: the CT's 1-sample int16 slice opened as a 256 x 256 x 3 picture (YBR_FULL_422: noise
    of -32768..32752) as if valid."""
    path = _edited_ct(tmp_path, photometric, lambda ds: setattr(ds, "PhotometricInterpretation", photometric))
    with pytest.raises(StudyError) as e:
        _read(path)
    message = str(e.value)
    assert f"PhotometricInterpretation {photometric} needs SamplesPerPixel 3, the file says 1" in message
    assert path.name in message and "\n" not in message


def test_samples_per_pixel_3_on_a_monochrome_ct_names_the_mismatch_not_a_truncation(tmp_path):
    path = _edited_ct(tmp_path, "spp3", lambda ds: setattr(ds, "SamplesPerPixel", 3))
    with pytest.raises(StudyError,
                       match="PhotometricInterpretation MONOCHROME2 needs SamplesPerPixel 1, the file says 3"):
        _read(path)


def test_real_colour_files_still_open_exactly():
    """The check refuses only a mismatch: RGB, YBR_FULL_422 (uncompressed and JPEG), palette files open as before."""
    for name in ("examples_rgb_color.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_small_odd.dcm"):
        ds = pydicom.dcmread(PYDICOM_FILES / name)
        assert np.array_equal(_read(PYDICOM_FILES / name).array[0], ds.pixel_array), name
    assert _read(PYDICOM_FILES / "examples_palette.dcm").array.shape == (1, 350, 800, 3)


@pytest.mark.parametrize("value, shown", [("MONOCHROME3", "MONOCHROME3"), ("monochrome1", "monochrome1"),
                                          (["MONOCHROME2", "RGB"], "MONOCHROME2\\\\RGB")])
def test_a_photometric_interpretation_outside_the_standards_names_is_refused_naming_it(tmp_path, value, shown):
    """GDCM read any other name as MONOCHROME2: the real CT slice opened at -1024..1657 HU under each, as if valid,
    and a radiograph's ``monochrome1`` was not inverted (bones black)."""
    path = _edited_ct(tmp_path, "pi", lambda ds: setattr(ds, "PhotometricInterpretation", value))
    with pytest.raises(StudyError) as e:
        _read(path)
    assert str(e.value) == (f"{path}: PhotometricInterpretation '{shown}'; expected MONOCHROME2, MONOCHROME1, PALETTE "
                            "COLOR, RGB or YBR_FULL (PS3.3's names, upper case): how the values are to be shown is not "
                            "known, so the image would open as a guess")


def test_colour_without_a_photometric_interpretation_is_refused_and_grey_without_one_opens(tmp_path):
    """pydicom's real RGB file without the field opened as RGB, a guess (YBR would be as likely); one sample without
    it is the stored values as they stand, as before (``test_readers``' defaults test)."""
    ds = pydicom.dcmread(PYDICOM_FILES / "SC_rgb_small_odd.dcm")
    del ds.PhotometricInterpretation
    ds.save_as(tmp_path / "rgb.dcm", enforce_file_format=False)
    with pytest.raises(StudyError) as e:
        _read(tmp_path / "rgb.dcm")
    assert str(e.value) == (f"{tmp_path / 'rgb.dcm'}: no PhotometricInterpretation for SamplesPerPixel 3; expected "
                            "RGB, YBR_FULL or another colour model: which colour each sample holds is not in the file")
    path = _edited_ct(tmp_path, "grey", lambda ds: delattr(ds, "PhotometricInterpretation"))
    assert np.array_equal(_read(path).array, _read(CT_FILE).array)


def _with_pixels(ds: pydicom.Dataset, data: bytes) -> None:
    ds.PixelData = data


@pytest.mark.parametrize("name, edit", [
    # 16-bit data under BitsAllocated 8: it opened as int8 noise of -128..127
    ("bits_allocated_8", lambda ds: setattr(ds, "BitsAllocated", 8) or setattr(ds, "BitsStored", 8)
     or setattr(ds, "HighBit", 7)),
    # two frames' pixels under no NumberOfFrames: the second frame was dropped without a word
    ("two_frames_declared_one", lambda ds: _with_pixels(ds, ds.PixelData * 2)),
    # Columns one short: every row shifted by one more pixel than the last (a sheared slice)
    ("columns_one_short", lambda ds: setattr(ds, "Columns", 255)),
])
def test_pixel_data_longer_than_the_header_describes_is_refused(tmp_path, name, edit):
    path = _edited_ct(tmp_path, name, edit)
    with pytest.raises(StudyError) as e:
        _read(path)
    message = str(e.value)
    assert "bytes of pixel data where the header describes" in message, message
    assert "NumberOfFrames, Rows/Columns, SamplesPerPixel or BitsAllocated is wrong" in message
    assert path.name in message and "\n" not in message


def test_a_few_bytes_of_padding_after_the_pixels_still_open_exactly(tmp_path):
    ds = pydicom.dcmread(CT_FILE)
    path = _edited_ct(tmp_path, "padded", lambda d: _with_pixels(d, d.PixelData + b"\0" * 16))
    assert np.array_equal(_read(path).array[0], ds.pixel_array)
    assert np.array_equal(_read(PYDICOM_FILES / "MR_small_padded.dcm").array[0],
                          pydicom.dcmread(PYDICOM_FILES / "MR_small_padded.dcm").pixel_array)


@pytest.mark.parametrize("name", ["SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm"])
def test_rle_colour_of_16_or_32_bits_is_refused_where_gdcm_decodes_it_wrongly(tmp_path, name):
    """GDCM's RLE decoder put each sample's bytes out of order: pydicom's pure red (65535, 0, 0) opened as
    (0, 65280, 255), every pixel wrong, as if valid. The same pixels uncompressed open exactly."""
    path = tmp_path / name
    shutil.copy(PYDICOM_FILES / name, path)
    with pytest.raises(StudyError, match=r"RLE Lossless colour \(3 samples\) of (16|32) bits: .*dcmdrle"):
        _read(path)
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.copy()
    ds.decompress()
    ds.save_as(tmp_path / "raw.dcm")
    assert np.array_equal(_read(tmp_path / "raw.dcm").array[0], expected)


def test_rle_grey_of_16_bits_and_rle_colour_of_8_bits_still_open_exactly(tmp_path):
    ds = pydicom.dcmread(CT_FILE)
    expected = ds.pixel_array.copy()
    ds.compress(pydicom.uid.RLELossless)
    ds.save_as(tmp_path / "ct_rle.dcm")
    assert np.array_equal(_read(tmp_path / "ct_rle.dcm").array[0], expected)
    rgb = pydicom.dcmread(PYDICOM_FILES / "SC_rgb_rle.dcm")
    assert np.array_equal(_read(PYDICOM_FILES / "SC_rgb_rle.dcm").array[0], rgb.pixel_array)


def _palette(tmp_path: Path, name: str, edit) -> Path:
    ds = pydicom.dcmread(PYDICOM_FILES / "examples_palette.dcm")
    edit(ds)
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=False)
    return path


def _set(keyword: str, value):
    return lambda ds: setattr(ds, keyword, value)


@pytest.mark.parametrize("name, edit, expected", [
    # GDCM's text for each, before: "Unknown exception thrown in SimpleITK ImageFileReader_Execute",
    # "GDCMImageIO: Cannot read requested file", "An invalid logic behavior occurredInternal->Length[type] * mult2
    # == length", "... mult2 == 2", "... subscript == 0": no field named
    ("no_red_data", lambda ds: delattr(ds, "RedPaletteColorLookupTableData"), "Red lookup table of 0 bytes"),
    ("no_descriptor", lambda ds: delattr(ds, "GreenPaletteColorLookupTableDescriptor"),
     "without a valid GreenPaletteColorLookupTableDescriptor"),
    ("red_data_short", lambda ds: setattr(ds, "RedPaletteColorLookupTableData",
                                          ds.RedPaletteColorLookupTableData[:100]), "Red lookup table of 100 bytes"),
    ("descriptor_16_entries", _set("RedPaletteColorLookupTableDescriptor", [16, 0, 16]), "descriptor 16, 0, 16"),
    ("descriptor_12_bits", _set("BluePaletteColorLookupTableDescriptor", [256, 0, 12]), "descriptor 256, 0, 12"),
    ("descriptor_first_100", _set("RedPaletteColorLookupTableDescriptor", [256, 100, 16]), "descriptor 256, 100, 16"),
])
def test_a_palette_colour_image_with_a_broken_lookup_table_names_the_table(tmp_path, name, edit, expected):
    path = _palette(tmp_path, name, edit)
    with pytest.raises(StudyError) as e:
        _read(path)
    message = str(e.value)
    assert "PALETTE COLOR" in message and expected in message and path.name in message, message
    assert "invalid logic" not in message and "Unknown exception" not in message


def test_the_palette_colour_image_itself_opens_in_its_colours():
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(PYDICOM_FILES / "examples_palette.dcm")
    expected = (apply_color_lut(ds.pixel_array, ds) >> 8).astype(np.uint8)  # 16-bit entries, shown at 8 bits
    assert np.array_equal(_read(PYDICOM_FILES / "examples_palette.dcm").array[0], expected)


@pytest.mark.parametrize("keyword, tag, vr, dtype", [("FloatPixelData", 0x7FE00008, "OF", np.float32),
                                                     ("DoubleFloatPixelData", 0x7FE00009, "OD", np.float64)])
def test_float_pixel_data_says_what_it_is_and_what_to_do(tmp_path, keyword, tag, vr, dtype):
    """A parametric map's float pixels: GDCM said only "GDCMImageIO: Cannot read requested file"."""
    def floats(ds):
        values = ds.pixel_array.astype(dtype)
        del ds.PixelData, ds.PixelRepresentation
        ds.add(pydicom.dataelem.DataElement(tag, vr, values.tobytes()))
        ds.BitsAllocated = ds.BitsStored = 8 * np.dtype(dtype).itemsize
        ds.HighBit = ds.BitsStored - 1

    path = _edited_ct(tmp_path, keyword, floats)
    bits = 8 * np.dtype(dtype).itemsize
    with pytest.raises(StudyError, match=f"{keyword} \\(a parametric map of {bits}-bit floats\\): "
                                         "the decoder here reads integer PixelData only; export the map as NIfTI"):
        _read(path)


def _stored_bits(bits_stored: int, high_bit: int, shift: int = 0, pixel_representation: int = 0):
    """The CT slice as unsigned values (+1024, 0..2681: 12 bits) stored ``shift`` bits up, under the description."""
    def edit(ds: pydicom.Dataset) -> None:
        values = (ds.pixel_array.astype(np.int32) + 1024).astype(np.uint16)
        ds.PixelData = (values << shift).astype("<u2").tobytes()
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, high_bit, pixel_representation
        ds.RescaleIntercept = -1024
    return edit


@pytest.mark.parametrize("name, edit, expected", [
    # the retired ACR-NEMA layout: 12 bits stored at the top of the 16 (HighBit 15). GDCM took the low 12 bits:
    # the CT opened at -1024..3056 HU where it holds -1024..1657, as if valid
    ("high_bit_15_of_12", _stored_bits(12, 15, shift=4), "HighBit 15 with BitsStored 12; expected HighBit 11 (one less "
     "than BitsStored): where the stored bits lie in each 16-bit value is in doubt, so the values would be guessed"),
    ("high_bit_3_of_16", _stored_bits(16, 3), "HighBit 3 with BitsStored 16; expected HighBit 15"),
    ("bits_stored_over_allocated", _stored_bits(20, 19), "BitsStored 20 with BitsAllocated 16; expected 1 to 16 bits "
     "stored in each 16-bit value"),
    ("bits_stored_0", _stored_bits(0, 15), "BitsStored 0 with BitsAllocated 16; expected 1 to 16"),
    ("pixel_representation_2", _stored_bits(16, 15, pixel_representation=2), "PixelRepresentation 2; expected 0 "
     "(unsigned) or 1 (signed)"),
])
def test_stored_bits_that_do_not_fit_their_description_are_refused_naming_the_field(tmp_path, name, edit, expected):
    """BitsStored, HighBit and PixelRepresentation say which bits of each value are the pixel and how to read them;
    GDCM ignored HighBit, BitsStored over BitsAllocated and a PixelRepresentation of 2, and opened each file."""
    path = _edited_ct(tmp_path, name, edit)
    with pytest.raises(StudyError) as e:
        _read(path)
    assert expected in str(e.value) and path.name in str(e.value) and "\n" not in str(e.value)


def test_twelve_bits_stored_in_the_low_bits_still_open_exactly(tmp_path):
    """BitsStored 12, HighBit 11 (most CT): the decoder keeps the low 12 bits, as the standard says."""
    path = _edited_ct(tmp_path, "twelve", _stored_bits(12, 11))
    ds = pydicom.dcmread(CT_FILE)
    assert np.array_equal(_read(path).array[0], ds.pixel_array.astype(np.int32))


def _raw_value(keyword: str, value: str, vr: str = "IS"):
    """Set ``keyword`` to the text ``value`` as stored in the file (a writer's mistake pydicom would not build)."""
    def edit(ds: pydicom.Dataset) -> None:
        tag = pydicom.datadict.tag_for_keyword(keyword)
        ds.add_new(tag, vr, None)
        ds[tag]._value = value
    return edit


@pytest.mark.parametrize("name, edit, expected", [
    # GDCM: "An invalid logic behavior occurredGetVR().Compatible(...)" or an "empty image of size (-1, ...)"; 0,
    # text and 1.5 opened as one frame: the count was taken as 1 without a word
    ("frames_text", _raw_value("NumberOfFrames", "abc"), "NumberOfFrames 'abc' is not a whole number"),
    ("frames_fraction", _raw_value("NumberOfFrames", "1.5"), "NumberOfFrames '1.5' is not a whole number"),
    ("frames_0", _raw_value("NumberOfFrames", "0"), "NumberOfFrames 0; expected 1 or more frames"),
    ("frames_negative", _raw_value("NumberOfFrames", "-1"), "NumberOfFrames -1; expected 1 or more frames"),
    # GDCM: "An invalid logic behavior occurredSamplesPerPixel == 1 || ..." and "Cannot read requested file"
    ("samples_0", lambda ds: setattr(ds, "SamplesPerPixel", 0), "SamplesPerPixel 0 / BitsAllocated 16; expected 1-4 "
     "samples of 1, 8, 16, 32 or 64 bits"),
    ("bits_0", lambda ds: setattr(ds, "BitsAllocated", 0), "SamplesPerPixel 1 / BitsAllocated 0; expected"),
])
def test_frame_sample_and_bit_counts_that_are_no_count_are_refused_naming_the_field(tmp_path, name, edit, expected):
    path = _edited_ct(tmp_path, name, edit)
    with pytest.raises(StudyError) as e:
        _read(path)
    assert expected in str(e.value) and path.name in str(e.value) and "\n" not in str(e.value)


def test_number_of_frames_1_still_opens_exactly(tmp_path):
    path = _edited_ct(tmp_path, "frames_1", _raw_value("NumberOfFrames", "1"))
    assert np.array_equal(_read(path).array[0], pydicom.dcmread(CT_FILE).pixel_array)


@pytest.mark.parametrize("syntax, name", [("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)"),
                                          ("1.2.840.10008.1.2.4.70", "JPEG Lossless, Non-Hierarchical, First-Order "
                                                                     "Prediction (Process 14 [Selection Value 1])")])
def test_compressed_pixel_data_the_decoder_cannot_read_names_its_transfer_syntax(tmp_path, syntax, name):
    """A damaged JPEG frame (a valid frame header, then noise) was refused as `DICOM pixel data could not be decoded
    (ITK ERROR: GDCMImageIO: Failed to change to Implicit Transfer Syntax)`: GDCM's step, not what failed."""
    from pydicom.encaps import encapsulate

    def damaged(ds: pydicom.Dataset) -> None:
        header = (b"\xff\xd8\xff\xc0\x00\x11\x08" + ds.Rows.to_bytes(2, "big") + ds.Columns.to_bytes(2, "big")
                  + b"\x01\x01\x11\x00")
        ds.PixelData = encapsulate([header + np.random.default_rng(0).bytes(5000) + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = syntax
    path = _edited_ct(tmp_path, "damaged", damaged)
    with pytest.raises(StudyError) as e:
        _read(path)
    assert str(e.value) == (f"{path}: its compressed pixel data ({name}) could not be decoded: damaged, or not what "
                            "its transfer syntax says (the decoder said: Failed to change to Implicit Transfer Syntax)")


def test_a_series_of_compressed_pixel_data_that_does_not_decode_names_its_transfer_syntax(tmp_path):
    """The same damaged JPEG frames as a series: `the DICOM series could not be read (ITK ERROR: GDCMImageIO: Failed to
    change to Implicit Transfer Syntax)`, naming neither the compression nor the damage."""
    from pydicom.encaps import encapsulate

    folder = tmp_path / "series"
    folder.mkdir()
    for f in sorted(CT_FILE.parent.glob("*.dcm"))[:3]:
        ds = pydicom.dcmread(f)
        header = (b"\xff\xd8\xff\xc0\x00\x11\x08" + ds.Rows.to_bytes(2, "big") + ds.Columns.to_bytes(2, "big")
                  + b"\x01\x01\x11\x00")
        ds.PixelData = encapsulate([header + np.random.default_rng(0).bytes(5000) + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
        ds.save_as(folder / f.name, enforce_file_format=False)
    with pytest.raises(StudyError) as e:
        _read(folder)
    assert str(e.value) == (f"{folder}: the DICOM series could not be read: its compressed pixel data (JPEG Baseline "
                            "(Process 1)) could not be decoded: damaged, or not what its transfer syntax says (the "
                            "decoder said: Failed to change to Implicit Transfer Syntax)")


@pytest.mark.parametrize("frames_said, frames_held", [(4, 3), (3, 4)], ids=["one_frame_short", "one_frame_over"])
def test_compressed_frames_that_do_not_match_number_of_frames_are_refused_naming_both(tmp_path, frames_said,
                                                                                      frames_held):
    """Four real CT slices as one RLE multi-frame, with NumberOfFrames one off the frames encoded: GDCM refused in its
    words, "Failed to change to Implicit Transfer Syntax", naming neither (session 17). The matching file opens."""
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import RLELossless

    from tests.hostile import dicom_bytes as db

    files = sorted((SAMPLES / "ct_head_0051_series").glob("*.dcm"))[:4]
    stack = np.stack([pydicom.dcmread(f).pixel_array for f in files]).astype(np.int16)
    ds = db.image_dataset(stack, ipp=(-4.0, -4.0, 0.0))
    ds.SpacingBetweenSlices = 1.5
    ds.compress(RLELossless)
    encoded = list(generate_frames(ds.PixelData, number_of_frames=4))
    path = db.write(ds, tmp_path / "rle.dcm")
    np.testing.assert_array_equal(_read(path).array, stack)
    ds.PixelData = encapsulate(encoded[:frames_held])
    ds["PixelData"].is_undefined_length = True
    ds.NumberOfFrames = frames_said
    path = db.write(ds, tmp_path / "rle_off.dcm")
    with pytest.raises(StudyError) as e:
        _read(path)
    assert str(e.value) == (f"{path}: {frames_held} compressed frame(s) in its pixel data where NumberOfFrames says "
                            f"{frames_said}; the frames cannot be matched to the image, so it would open garbled or "
                            "not at all; refused")


def test_a_modality_of_several_values_is_refused_naming_it(tmp_path):
    """``CT\\MR`` opened as pydicom's list: the real CT slice came out with modality "['CT', 'MR']", so no CT
    window, no check of its HU, and the list in the facts panel; so did the real series with it in every slice."""
    path = _edited_ct(tmp_path, "two", lambda ds: setattr(ds, "Modality", ["CT", "MR"]))
    with pytest.raises(StudyError) as e:
        _read(path)
    assert str(e.value) == (f"{path}: Modality 'CT\\\\MR' holds 2 values; expected one (CT, MR, US, ...): which "
                            "modality the pixels are, and so their window and checks, is not known")
    series = tmp_path / "series"
    shutil.copytree(CT_FILE.parent, series)
    for f in sorted(series.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.Modality = ["CT", "MR"]
        ds.save_as(f, enforce_file_format=False)
    with pytest.raises(StudyError, match=r"IM0001.dcm: Modality 'CT\\\\MR' holds 2 values"):
        _read(series)
    assert _read(CT_FILE).modality == "CT"


def test_a_planar_configuration_other_than_0_or_1_is_refused_naming_it(tmp_path):
    """PlanarConfiguration 2 on a colour image was refused in GDCM's words, "DICOM pixel data could not be decoded (An
    invalid logic behavior occurredpc == 0 || pc == 1)" (session 21). 0 and 1 still open as the colours they hold."""
    source = PYDICOM_FILES / "SC_rgb_small_odd.dcm"
    ds = pydicom.dcmread(source)
    path = tmp_path / "planar2.dcm"
    ds.PlanarConfiguration = 2
    ds.save_as(path, enforce_file_format=False)
    with pytest.raises(StudyError) as e:
        _read(path)
    assert str(e.value) == (f"{path}: PlanarConfiguration 2; expected 0 (the samples of each pixel together) or 1 (each "
                            "colour plane after the other): how the colour samples are laid out is not known")
    ds.PlanarConfiguration = 1
    ds.PixelData = pydicom.dcmread(source).pixel_array.transpose(2, 0, 1).tobytes()
    ds.save_as(path, enforce_file_format=False)
    np.testing.assert_array_equal(_read(path).array[0], pydicom.dcmread(source).pixel_array)


def _modality_lut(offset: int):
    """A ModalityLUTSequence mapping stored values 0..4095 to themselves + ``offset`` (16-bit entries)."""
    def edit(ds: pydicom.Dataset) -> None:
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        ds.Modality, ds.PixelRepresentation = "MR", 0
        ds.PixelData = np.clip(ds.pixel_array.astype(np.int32) + 1024, 0, 4095).astype("<u2").tobytes()
        del ds.RescaleSlope, ds.RescaleIntercept
        item = Dataset()
        item.LUTDescriptor, item.ModalityLUTType = [4096, 0, 16], "US"
        item.LUTData = (np.arange(4096) + offset).astype("<u2").tobytes()
        ds.ModalityLUTSequence = Sequence([item])
    return edit


def test_a_modality_lut_that_changes_values_is_refused_and_an_identity_one_opens(tmp_path):
    """GDCM does not apply a Modality LUT: an MR whose table maps each stored value v to v + 1000 opened at the stored
    values, as if valid (session 21)."""
    path = _edited_ct(tmp_path, "lut", _modality_lut(1000))
    with pytest.raises(StudyError) as e:
        _read(path)
    assert str(e.value) == (f"{path}: a ModalityLUTSequence (a lookup table from stored values to the modality's "
                            "values), which the decoder here does not apply, so the image would open at its stored "
                            "values; export it with the table applied (or with RescaleSlope/RescaleIntercept) and open "
                            "that")
    identity = _edited_ct(tmp_path, "identity", _modality_lut(0))
    np.testing.assert_array_equal(_read(identity).array[0], pydicom.dcmread(identity).pixel_array)


@pytest.mark.parametrize("rows", [128, 512])
def test_rle_frames_longer_or_shorter_than_rows_say_are_refused_naming_rows(tmp_path, rows):
    """Session 30: RLE has no frame header to check Rows/Columns against (as JPEG's is, session 15), so the CT slice
    RLE-compressed with Rows then halved opened as its top half, as if valid (GDCM decodes what the header describes
    and drops the rest; pydicom's SC_rgb_rle.dcm so edited did the same); Rows doubled was refused in GDCM's words,
    `Failed to change to Implicit Transfer Syntax`, naming nothing. Each segment's decoded length is now counted (a
    walk over its run headers, about 1 ms a 256 x 256 slice) before any decoder sees it."""
    ds = pydicom.dcmread(CT_FILE)
    ds.compress(pydicom.uid.RLELossless)
    ds.Rows = rows
    ds.save_as(tmp_path / "ct_rle.dcm")
    with pytest.raises(StudyError, match="^" + re.escape(
            f"{tmp_path / 'ct_rle.dcm'}: frame 1, RLE segment 1 decodes to 65536 bytes where Rows x Columns "
            f"({rows} x 256) make {rows * 256}: Rows or Columns is wrong, so the image would open cut or garbled; "
            "refused") + "$"):
        _read(tmp_path / "ct_rle.dcm")


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "JPEG-lossy.dcm"])
def test_jpeg_samples_wider_than_bits_allocated_are_refused_naming_both(tmp_path, name):
    """Session 30: a JPEG-LS MR of 16-bit samples (or a 12-bit JPEG) whose header said BitsAllocated 8, BitsStored 8,
    HighBit 7 opened as int8 noise (-128..127, mean 5 where the image's is 519), as if valid: GDCM fits the decoded
    values into the header's 8 bits. The codestream's own sample precision (its SOF header) is now checked against
    BitsAllocated before decoding."""
    ds = pydicom.dcmread(PYDICOM_FILES / name)
    precision = 16 if "jpeg_ls" in name else 12
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.save_as(tmp_path / name)
    with pytest.raises(StudyError, match="^" + re.escape(
            f"{tmp_path / name}: its compressed frames hold {precision}-bit samples (the JPEG frame header's "
            "precision) but BitsAllocated is 8: the values cannot fit, so the image would open garbled; "
            "refused") + "$"):
        _read(tmp_path / name)
    assert _read(PYDICOM_FILES / name).array.dtype.itemsize == 2  # as stored, it opens

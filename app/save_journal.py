"""The click path's save: an edit's plane appended to a per-session journal before the answer goes out.

Why (issue 22): the atomic save after every click (labels.npz compressed, state.json, fsync each) took
13-17 ms of every click on the GPU server and more on a loaded CPU, on the click's own path. A click changes
one label plane, which its :class:`app.session.Edit` already holds compressed (``app.packed``): appending
it with the session's state (a few KiB, no fsync) costs well under a millisecond. The full atomic save runs
after the answer, in the store's background saver (``SessionStore.save_edit``), coalescing a session's
clicks; it records the last journal record it covers (``journal_seq`` in state.json) and empties the journal.

Restore (``SessionStore._load``) applies the records newer than state.json's ``journal_seq``, in order, over
labels.npz: a plane's content after the edit overwrites it, so a record the snapshot already holds changes
nothing. Each record carries a CRC-32: a record cut by a crash mid-append (an edit never acknowledged) ends
the replay. A record survives kill -9 once ``append`` returned (the OS holds the written bytes); against a
power cut, the background save's fsync is what makes it durable.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.packed import PackedArray

JOURNAL = "journal.bin"
MAGIC = b"MSJ1"
_HEAD = struct.Struct("<4sII")  # magic, header bytes, payload bytes
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class Record:
    seq: int
    view: str
    index: int
    plane: np.ndarray
    state: dict[str, Any]


def append(directory: Path, seq: int, view: str, index: int, after: PackedArray, state: dict[str, Any]) -> None:
    """Append one edit (its plane ``after``, packed) and the session's state as record ``seq``."""
    header = json.dumps({"seq": int(seq), "view": view, "index": int(index), "shape": list(after.shape),
                         "dtype": after.dtype.str, "state": state}).encode()
    payload = after.compressed
    record = _HEAD.pack(MAGIC, len(header), len(payload)) + header + payload + _CRC.pack(zlib.crc32(header + payload))
    with open(Path(directory) / JOURNAL, "ab") as f:
        f.write(record)


def read(directory: Path) -> list[Record]:
    """Every whole record, in order; reading stops at the first cut or damaged one."""
    try:
        data = (Path(directory) / JOURNAL).read_bytes()
    except FileNotFoundError:
        return []
    out, at = [], 0
    while at + _HEAD.size <= len(data):
        magic, nh, npay = _HEAD.unpack_from(data, at)
        end = at + _HEAD.size + nh + npay + _CRC.size
        if magic != MAGIC or end > len(data):
            break
        body = data[at + _HEAD.size : end - _CRC.size]
        if _CRC.unpack_from(data, end - _CRC.size)[0] != zlib.crc32(body):
            break
        try:
            head = json.loads(body[:nh])
            plane = PackedArray.from_compressed(body[nh:], tuple(head["shape"]), np.dtype(head["dtype"])).unpack()
            out.append(Record(int(head["seq"]), str(head["view"]), int(head["index"]), plane, dict(head["state"])))
        except (ValueError, KeyError, TypeError, zlib.error):
            break
        at = end
    return out


def clear(directory: Path) -> None:
    """Drop the journal (a full save now holds every record in it)."""
    try:
        os.unlink(Path(directory) / JOURNAL)
    except FileNotFoundError:
        pass

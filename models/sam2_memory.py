"""SAM 2's memory-based tracking on an in-memory stack of slices (no JPEG folder, no video file).

``SAM2VideoPredictor.init_state`` reads a folder of JPEG frames into one (N, 3, S, S) tensor. Here
the frames are a lazy sequence (:class:`FrameStack`: a slice is windowed and resized when the model
first asks for it, so a 500-slice CT never holds 500 x 3 x 1024 x 1024 floats), and the inference
state is built as ``init_state`` builds it (MedSAM2's ``sam2_video_predictor_npz.init_state`` takes a
frame tensor the same way). Everything after that is the official predictor: ``add_new_points_or_box``,
``add_new_mask``, ``propagate_in_video`` with its memory bank, object pointers and occlusion head.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterator

import numpy as np
import torch


class FrameStack:
    """Frames 0..n-1 made on demand by ``make(k) -> (3, S, S) float32``; keeps the last few."""

    def __init__(self, n: int, make: Callable[[int], torch.Tensor], keep: int = 4):
        self.n, self.make, self.keep = n, make, keep
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> torch.Tensor:
        if not 0 <= k < self.n:
            raise IndexError(f"frame {k} out of range 0..{self.n - 1}")
        if k not in self._cache:
            self._cache[k] = self.make(k)
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        return self._cache[k]


def init_state(predictor, frames: FrameStack | torch.Tensor, height: int, width: int) -> dict:
    """The inference state of ``SAM2VideoPredictor.init_state`` for frames already in memory."""
    device = predictor.device
    state: dict = {
        "images": frames,
        "num_frames": len(frames),
        "offload_video_to_cpu": False,
        "offload_state_to_cpu": False,
        "video_height": height,
        "video_width": width,
        "device": device,
        "storage_device": device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }
    # init_state also encodes frame 0 to warm its one-frame feature cache; a volume's start slice is
    # rarely slice 0, so that pass is skipped (the cache only saves work, it changes no output)
    return state


class MemoryTracker:
    """One object tracked through a stack of slices with SAM 2's memory (the official predictor)."""

    OBJ_ID = 1

    def __init__(self, predictor, frames: FrameStack | torch.Tensor, height: int, width: int):
        self.predictor = predictor
        self.state = init_state(predictor, frames, height, width)

    def add_prompt(self, k: int, points: np.ndarray | None = None, labels: np.ndarray | None = None,
                   box: np.ndarray | None = None) -> np.ndarray:
        """Clicks and/or a box (original pixels) on frame k, a conditioning frame -> its (H, W) logits."""
        _, _, logits = self.predictor.add_new_points_or_box(
            self.state, frame_idx=int(k), obj_id=self.OBJ_ID,
            points=None if points is None else np.asarray(points, np.float32),
            labels=None if labels is None else np.asarray(labels, np.int32),
            box=None if box is None else np.asarray(box, np.float32),
        )
        return logits[0, 0].float().cpu().numpy()

    def add_mask(self, k: int, mask: np.ndarray) -> np.ndarray:
        """A drawn or corrected (H, W) mask on frame k, a conditioning frame -> its (H, W) logits."""
        _, _, logits = self.predictor.add_new_mask(self.state, frame_idx=int(k), obj_id=self.OBJ_ID,
                                                   mask=np.asarray(mask, dtype=bool))
        return logits[0, 0].float().cpu().numpy()

    def object_score(self, k: int) -> float:
        """Probability that the object is on frame k (SAM 2's occlusion head), NaN if not tracked."""
        out = self._output(k)
        if out is None or out.get("object_score_logits") is None:
            return float("nan")
        return float(torch.sigmoid(out["object_score_logits"].float()).flatten()[0])

    def _output(self, k: int) -> dict | None:
        obj = self.state["output_dict_per_obj"].get(0)
        if obj is None:
            return None
        return obj["cond_frame_outputs"].get(k) or obj["non_cond_frame_outputs"].get(k)

    def propagate(self, *, reverse: bool, start: int | None = None, max_frames: int | None = None
                  ) -> Iterator[tuple[int, np.ndarray]]:
        """``propagate_in_video``: (k, (H, W) logits at the original size) in walking order, starting at
        the earliest conditioning frame (or ``start``). Stop iterating to stop the walk."""
        import sam2.sam2_video_predictor as official

        walk = self.predictor.propagate_in_video(
            self.state, start_frame_idx=start, max_frame_num_to_track=max_frames, reverse=reverse
        )
        bar, official.tqdm = official.tqdm, _no_bar  # the callers report progress themselves (CLI, UI, MONAI Label)
        try:
            first = next(walk, None)  # the official generator makes its tqdm bar on the first step
        finally:
            official.tqdm = bar
        if first is None:
            return
        k, _, logits = first
        yield int(k), logits[0, 0].float().cpu().numpy()
        for k, _, logits in walk:
            yield int(k), logits[0, 0].float().cpu().numpy()


def _no_bar(iterable, **_):
    """Stands in for tqdm in the official propagation loop (no progress bar on stderr)."""
    return iterable

"""MONAI Label's "next sample" (``POST /activelearning/{strategy}``): which datastore image to label next.

3D Slicer's MONAILabel module fills its strategy list from ``/info/``'s ``strategies`` and, on *Next Sample*
(and after *Save Label* with auto-fetch on), posts here and opens the reply's ``id`` through
``GET /datastore/image``; an empty reply makes it say that no unlabelled image is left. The two strategies are
MONAI Label's own (``monailabel.tasks.activelearning``), with one change: an image handed out in the last
``LEASE_S`` seconds is passed over while another is left, so that two annotators (or one who asks again without
saving, to skip an image) are not given the same image. ``first`` is then the first such image by id, ``random``
one of them drawn uniformly. When every unlabelled image was handed out recently, ``first`` gives the one handed
out longest ago (one annotator skipping images cycles through them) and ``random`` draws with MONAI Label's
weights (the time since each was handed out). The reply carries no server path: a client opens the image by its
id (MONAI Label sends its file path, which only a client on the same disk can use); on a PACS datastore it
carries the StudyInstanceUID and SeriesInstanceUID, which OHIF's Next Sample opens.
"""

from __future__ import annotations

import math
import random
import threading
import time

from app.labelserver.datastore import Datastore, check_tag

LEASE_S = 600.0  # how long an image handed out is taken to be in someone's hands
STRATEGIES = {
    "first": "the first image (by id) without a final label that nobody was given in the last 10 minutes",
    "random": "a random image without a final label that nobody was given in the last 10 minutes",
}


class UnknownStrategy(LookupError):
    """A strategy this server does not have: answered 404 with the ones it has."""


class NextSample:
    """Chooses the next image and remembers when each was last handed out (for ``random``'s weights)."""

    def __init__(self, datastore: Datastore, rng: random.Random | None = None):
        self.datastore = datastore
        self.rng = rng or random.Random()
        self._served: dict[str, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def info() -> dict[str, dict[str, str]]:
        """``/info/``'s ``strategies``: name -> description, as MONAI Label lists them."""
        return {name: {"description": text} for name, text in STRATEGIES.items()}

    def unlabelled(self, label_tag: str = "final") -> list[str]:
        """The datastore's ids without a label of ``label_tag``, sorted."""
        ids = self.datastore.ids()
        done = self.datastore.labelled(check_tag(label_tag), ids)
        return sorted(i for i in ids if i not in done)

    def __call__(self, strategy: str, params: dict) -> dict:
        """The reply: ``{"id", "name", "strategy", "weight"}`` of the chosen image, ``{}`` when none is left."""
        if strategy not in STRATEGIES:
            raise UnknownStrategy(f"strategy {strategy[:60]!r} not found; this server has {', '.join(STRATEGIES)}")
        tag = params.get("label_tag") or "final"
        if not isinstance(tag, str):
            raise ValueError("params.label_tag: expected a label tag such as 'final'")
        ids = self.unlabelled(tag)
        if not ids:
            return {}
        with self._lock:
            now = time.monotonic()
            free = [i for i in ids if now - self._served.get(i, -math.inf) >= LEASE_S]
            weight = 1.0
            if strategy == "first":
                chosen = free[0] if free else min(ids, key=lambda i: self._served[i])  # the longest in hand
            elif free:
                chosen = self.rng.choice(free)
            else:
                ages = [now - self._served[i] for i in ids]
                chosen = self.rng.choices(ids, weights=ages)[0] if sum(ages) > 0 else self.rng.choice(ids)
                weight = ages[ids.index(chosen)]
            self._served[chosen] = now
        # the name Slicer saves the download under: GET /datastore/image always sends NIfTI
        return {"id": chosen, "name": f"{chosen}.nii.gz", "strategy": strategy, "weight": round(float(weight), 3),
                **self.datastore.image_info(chosen)}

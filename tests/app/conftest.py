"""Fixtures of the app tests shared across files."""

from __future__ import annotations

import pytest

from app.embedding_cache import EmbeddingCache


@pytest.fixture(scope="session")
def ct_series_embeddings() -> EmbeddingCache:
    """LiteMedSAM's embeddings of the shared 12-slice CT series (default window), one cache for
    ``test_propagation.py``, ``test_propagation_anchors.py`` and ``test_propagation_fill.py``: the files walk the
    same slices, and each file's own cache encoded all 12 again (12 encodes, ~35 s of a 2-core CI run). The files
    are one xdist scheduling unit (``tests/conftest.py``), so they meet this cache in one worker."""
    return EmbeddingCache(max_items=16)

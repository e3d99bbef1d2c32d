"""Fixtures of the ``smartpt train`` tests: the bundled corpus, built once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def bundled(tmp_path_factory):
    from nemo_smartpt.bundled.build import ensure_bundled_catalog

    directory = tmp_path_factory.mktemp("bundled")
    ensure_bundled_catalog(directory)
    return str(directory)

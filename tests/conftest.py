"""Session-wide fixtures. The default model is converted once into $TESSERA_HOME (CI points it at
the clone, `make test` prepares it first); tests never touch a model hub."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def default_model_dir():
    from engine.loader.default_model import ensure_model_dir

    return ensure_model_dir(progress=False)

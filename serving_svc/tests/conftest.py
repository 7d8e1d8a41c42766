"""Shared fixtures: tiny SavedModels exported once per session (saving costs ~0.4 s each)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from serving_svc.tests.helpers import ImageModel, MultiInputModel, export


@dataclass
class Exports:
    """Exported versions to copy into a test's repository, and the modules to compare with."""

    image_v1: Path
    image_v2: Path
    multi: Path
    model_v1: ImageModel
    model_v2: ImageModel
    multi_model: MultiInputModel


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    store = tmp_path_factory.mktemp("exports")
    v1, v2, multi = ImageModel(seed=1), ImageModel(seed=2), MultiInputModel()
    return Exports(
        image_v1=export(v1, store, "image", 1),
        image_v2=export(v2, store, "image", 2),
        multi=export(multi, store, "multi", 1),
        model_v1=v1,
        model_v2=v2,
        multi_model=multi,
    )

"""The Python API the README documents: each stage's verbs import from the stage package."""

from __future__ import annotations

import subprocess
import sys

import pytest

# The names README.md's "Python API" section shows, by stage package.
DOCUMENTED = {
    "lorastory.data": ["run_recipe", "load_recipe", "import_dataset", "ImportConfig", "export_csv"],
    "lorastory.train": ["train", "TrainConfig"],
    "lorastory.generate": ["generate_story", "load_story"],
    "lorastory.eval": ["evaluate_run"],
}


@pytest.mark.parametrize("package", sorted(DOCUMENTED))
def test_documented_names_import_in_a_fresh_interpreter(package: str) -> None:
    # A fresh interpreter per package: an import cycle shows only when the package is imported first.
    names = ", ".join(DOCUMENTED[package])
    code = f"from {package} import {names}\nimport {package}\nassert set({DOCUMENTED[package]!r}) <= set({package}.__all__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_documented_names_are_the_implementations() -> None:
    from lorastory import data, eval, generate, train
    from lorastory.data.dataset import export_csv, import_dataset
    from lorastory.data.executor import run_recipe
    from lorastory.eval.report import evaluate_run
    from lorastory.generate.story import generate_story
    from lorastory.generate.story_file import load_story
    from lorastory.train.config import TrainConfig
    from lorastory.train.trainer import train as train_fn

    assert (data.run_recipe, data.import_dataset, data.export_csv) == (run_recipe, import_dataset, export_csv)
    assert (train.train, train.TrainConfig) == (train_fn, TrainConfig)
    assert (generate.generate_story, generate.load_story) == (generate_story, load_story)
    assert eval.evaluate_run is evaluate_run


def test_unknown_name_is_an_attribute_error() -> None:
    import lorastory.train

    with pytest.raises(AttributeError):
        lorastory.train.no_such_verb  # noqa: B018

"""The data stage: import, curate with Data-Juicer-format recipes, export for training.

Its verbs, the Python API the README documents::

    from lorastory.data import ImportConfig, import_dataset, load_recipe, run_recipe, export_csv

    import_dataset(ImportConfig(source="my_images", caption="二次元"), "data/input")
    run_recipe(load_recipe("recipe.yaml"))          # export_path, stats and reports
    export_csv("data/output/result.jsonl", "data/train")
"""

from lorastory.data.dataset import ImportConfig, StageResult, export_csv, import_dataset
from lorastory.data.executor import RunResult, run_recipe
from lorastory.data.recipe import Recipe, load_recipe

__all__ = [
    "ImportConfig",
    "Recipe",
    "RunResult",
    "StageResult",
    "export_csv",
    "import_dataset",
    "load_recipe",
    "run_recipe",
]

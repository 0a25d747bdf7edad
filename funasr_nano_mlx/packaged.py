"""The data files that ship inside the package: recipes, evaluation-set definitions and the model-card
template with the upstream figures. They are read through importlib.resources, so an installed wheel
finds them exactly as a source checkout does."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# pip installs a wheel unpacked, so the package is a directory and `files()` gives a pathlib.Path;
# the stages need real paths (a recipe file's mtime decides whether a stage is up to date).
PACKAGE_DIR = Path(str(files(__package__)))
RECIPES_DIR = PACKAGE_DIR / "recipes"
EVAL_SETS_DIR = PACKAGE_DIR / "eval_sets"
MODEL_CARDS_DIR = PACKAGE_DIR / "model_cards"


def packaged_names(folder: Path) -> list[str]:
    """The names of the YAML definitions in one of the folders above, sorted."""
    return sorted(path.stem for path in folder.glob("*.yaml"))

"""maskbench: masked vision-language pretraining compared at matched compute."""
import os
from pathlib import Path

__version__ = "0.1.0"
REPO_ROOT = Path(__file__).resolve().parent.parent


def methods_dir() -> Path:
    """The folder of method folders: ``$MASKBENCH_METHODS``, else the repository's ``methods/``."""
    return Path(os.environ.get("MASKBENCH_METHODS", REPO_ROOT / "methods"))

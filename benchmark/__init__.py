"""maskbench: masked vision-language pretraining compared at matched compute."""
from pathlib import Path

__version__ = "0.1.0"
REPO_ROOT = Path(__file__).resolve().parent.parent

"""Session-wide test settings shared by every stage's tests."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Every test data dir is temporary, but the prepared model (a ~1 minute GGUF conversion)
# is shared: Settings.models_dir comes from this variable (the Makefile sets it too).
os.environ.setdefault("RECSMITH_MODELS_DIR", str(REPO / "var" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

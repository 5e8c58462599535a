"""Keep the libraries' per-file progress bars and deprecation chatter out of our output, so the
user sees our own progress (rich bars, the run's progress in the database) and real warnings.

In serving/ because both the serving side (serving/generation.py) and the trainer (trainer/job.py,
which imports serving) quiet the same libraries; the trainer imports it downward."""
from __future__ import annotations

import os
import warnings


def quiet_libraries() -> None:
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - both are dependencies
        pass

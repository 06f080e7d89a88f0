"""Loading Hugging Face Hub datasets, with a clear error when neither Hub nor cache has them.

Compute nodes are often offline. ``datasets`` then either retries the network for tens of
seconds or fails with a message about connections; we turn that into one ``ValueError``
that says what is missing and how to get it (pre-cache it, or point at local files).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_TRUE = {"1", "ON", "YES", "TRUE"}


def offline_requested() -> bool:
    """Whether the environment asks for offline mode *now*, with ``datasets``' precedence.

    ``datasets`` and ``huggingface_hub`` read these variables once, at import; reading them
    again here lets a launcher (or a test) that sets them later still be obeyed.
    """

    def is_true(var: str) -> bool:
        return os.environ.get(var, "").upper() in _TRUE

    if "HF_DATASETS_OFFLINE" in os.environ:  # datasets lets this one override HF_HUB_OFFLINE
        return is_true("HF_DATASETS_OFFLINE")
    return is_true("HF_HUB_OFFLINE") or is_true("TRANSFORMERS_OFFLINE")


@contextmanager
def _offline_mode(enabled: bool) -> Iterator[None]:
    """Switch both libraries' import-time offline flags on for the duration, then restore."""
    if not enabled:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def load_hub_dataset(name: str, config: str | None = None, *, local_alternative: str) -> Any:
    """``datasets.load_dataset(name, config)`` (a ``DatasetDict``), or a ``ValueError`` that
    names the dataset and the ways around a missing Hub.

    ``local_alternative`` completes the message with the source-specific local option.
    """
    # Imported here: ``datasets`` is slow to import and only these sources need it.
    import datasets

    what = f"{name!r}" + (f" (config {config!r})" if config else "")
    call = f"datasets.load_dataset({name!r}" + (f", {config!r}" if config else "") + ")"
    try:
        with _offline_mode(offline_requested()):
            return datasets.load_dataset(name, config)
    except RuntimeError as e:
        # datasets >= 4 refuses Hub repos that still ship a loading script.
        if "scripts are no longer supported" not in str(e):
            raise
        raise ValueError(
            f"Hugging Face dataset {what} still uses a loading script, which datasets "
            f"{datasets.__version__} cannot run. Convert it to JSON Lines once (e.g. with datasets<4) "
            f"and use {local_alternative}. (Underlying error: {e})"
        ) from e
    except (ConnectionError, FileNotFoundError) as e:
        raise ValueError(
            f"Hugging Face dataset {what} is not available: the Hub cannot be reached and it is "
            f"not in the local cache ({datasets.config.HF_DATASETS_CACHE}). Download it once "
            f"where the Hub is reachable (python -c \"import datasets; {call}\") and make that "
            "cache visible here with HF_DATASETS_CACHE or HF_HOME, or use local files instead: "
            f"{local_alternative}. (Underlying error: {type(e).__name__}: {e})"
        ) from e

"""Whether a run can reach the Hugging Face hub, found out once and quickly before anything loads.

On a node without internet, transformers and datasets retry the hub for about a minute, and
every rank prints its retries. When the config needs the hub (a model or dataset by hub
name) and ``HF_HUB_OFFLINE`` is not set, one short TCP probe decides: unreachable means
``HF_HUB_OFFLINE=1`` for this process, set before those libraries are imported, so a
missing model or dataset fails at once with fedmpi's own message.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from fedmpi.config import Config

HUB_SOURCES = ("20newsgroups", "e2e_nlg", "multinli", "xlsum")  # loaded from the hub without data.path
PROBE_SECONDS = 3.0
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_needed(cfg: Config) -> bool:
    names = (cfg.model.name, *getattr(cfg.strategy, "backbone_candidates", ()))  # layer finetuning's pool
    model_from_hub = any(not (n == "minilm" or n.startswith("tiny-") or Path(n).exists()) for n in names)
    return model_from_hub or (cfg.data.source in HUB_SOURCES and cfg.data.path is None)


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """A TCP connection to the hub's host within ``timeout`` (name resolution included)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    reached = threading.Event()

    def connect() -> None:  # in a thread: getaddrinfo itself has no timeout
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            reached.set()
        except OSError:
            pass

    threading.Thread(target=connect, daemon=True).start()
    return reached.wait(timeout)


def settle_offline_mode(cfg: Config) -> str | None:
    """Set HF_HUB_OFFLINE=1 when the run needs the hub and cannot reach it; the note to print, or None."""
    if any(os.environ.get(var) for var in _OFFLINE_VARS) or not hub_needed(cfg):
        return None
    if hub_reachable():
        return None
    os.environ["HF_HUB_OFFLINE"] = "1"
    return f"the Hugging Face hub is unreachable (no answer within {PROBE_SECONDS:.0f} s): working offline (HF_HUB_OFFLINE=1)"

"""What a backbone can take: its longest input, checked against the config before any batch runs.

Without this check, a ``data.max_length`` beyond the model's position table fails deep inside
torch's embedding lookup, on every rank, with a message that names neither.
"""

from __future__ import annotations

from typing import Any

# Config attributes that hold a model's number of learned positions, by architecture family.
_POSITION_ATTRS = ("max_position_embeddings", "n_positions", "n_ctx")


def max_positions(model_config: Any) -> int | None:
    """The longest input the model accepts, or None when it has no learned position table (T5)."""
    for attr in _POSITION_ATTRS:
        value = getattr(model_config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_lengths(model_config: Any, **lengths: int | None) -> None:
    """``lengths``: config keys of ``data`` (max_length, max_target_length) -> their values."""
    limit = max_positions(model_config)
    for key, length in lengths.items():
        if limit is not None and length is not None and length > limit:
            raise ValueError(
                f"data.{key}={length} exceeds the model's {limit} positions "
                f"({model_config.model_type}); set data.{key}={limit} or less"
            )

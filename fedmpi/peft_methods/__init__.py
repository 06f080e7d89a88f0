"""The PEFT-method registry: ``peft.method`` name -> the method class, one line per method.

Each method is a frozen dataclass whose fields are its options section (``peft.<name>``)
and which implements ``PeftMethod`` (base.py): wrap the backbone, map its trainable
elements to attention heads. ``method_from_config`` turns the config's ``peft`` section
into the method object ``build_model`` takes.
"""

from __future__ import annotations

from typing import Any

from fedmpi.peft_methods.base import PeftMethod
from fedmpi.peft_methods.full import Full
from fedmpi.peft_methods.ia3 import Ia3
from fedmpi.peft_methods.lora import Lora
from fedmpi.peft_methods.prefix import Prefix
from fedmpi.peft_methods.prompt import Prompt

PEFT_METHODS: dict[str, type[PeftMethod]] = {}


def register(cls: type[PeftMethod]) -> type[PeftMethod]:
    PEFT_METHODS[cls.name] = cls
    return cls


register(Lora)
register(Ia3)
register(Prefix)  # P-tuning v2
register(Prompt)
register(Full)


def get_method(name: str) -> type[PeftMethod]:
    """The method class registered as ``name``; a clear error naming peft.method otherwise."""
    if name not in PEFT_METHODS:
        raise ValueError(f"peft.method: unknown method {name!r}; known: {', '.join(PEFT_METHODS)}")
    return PEFT_METHODS[name]


def method_from_config(peft: Any) -> PeftMethod:
    """The method object for a config ``peft`` section (its ``method`` and that method's options)."""
    cls = get_method(peft.method)
    options = getattr(peft, peft.method)
    return cls(**options.model_dump())


__all__ = ["PEFT_METHODS", "Full", "Ia3", "Lora", "PeftMethod", "Prefix", "Prompt", "get_method", "method_from_config", "register"]

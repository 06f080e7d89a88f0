"""Keeping NaN and inf out of the global model: which client updates the server must reject.

A client that diverged (too high a learning rate, an overflow in half precision) sends a
delta, scores or loss that are not finite. One such update would make the aggregate, and so
every later round, NaN. The server rejects those updates before combining
(``server.on_nonfinite=skip``) or ends the run naming them (``fail``); the rejected ones
are recorded in the result file.
"""

from __future__ import annotations

import numpy as np

from fedmpi.payload import ClientUpdate


def is_finite(update: ClientUpdate) -> bool:
    """Whether every number the update carries (delta, head scores, training loss) is finite."""
    if not np.isfinite(update.train_loss) or not np.isfinite(update.values).all():
        return False
    return update.scores is None or bool(np.isfinite(update.scores).all())


def split_finite(updates: list[ClientUpdate]) -> tuple[list[ClientUpdate], list[ClientUpdate]]:
    """(updates to aggregate, updates to reject), each in the order given."""
    finite = [is_finite(u) for u in updates]
    return [u for u, ok in zip(updates, finite) if ok], [u for u, ok in zip(updates, finite) if not ok]


def describe_rejected(round_: int, rejected: list[ClientUpdate]) -> str:
    clients = ",".join(str(u.client) for u in rejected)
    return (
        f"server.on_nonfinite=fail: round {round_}: client(s) {clients} sent a non-finite update "
        "(NaN or inf; a diverging client, e.g. client.lr too high); server.on_nonfinite=skip rejects them instead"
    )

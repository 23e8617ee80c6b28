"""Small shared helpers for tasks: device choice, seeding, user-facing errors."""
from __future__ import annotations

import os
import random


class UserError(Exception):
    """Bad input from the user: printed as one line naming the file and the reason, exit code 2."""


def pick_device(requested: str | None = None):
    """CUDA when present (or when asked), else CPU."""
    import torch

    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))

"""The built-in synthetic worlds: what a clip shows and sounds like, and its ground truth.

- `shapes` (v1, the regression world): one coloured shape glides in one of four directions while a
  steady tone plays for the whole clip.
- `events` (v2): one or two objects; each glides (steady tone) or falls and bounces on the floor,
  and every impact makes a short percussive sound at the pitch of the object that hit.

A world is a module with `plan(num_clips, seed, i2v_fraction) -> list[ClipSpec]`, `render_frames`,
`render_audio` and `SPLITS` (the compositions each held-out split keeps out of training). Every
annotation's `attributes` is a scene: {"world", "objects": [{color, shape, motion, pitch, ...}]}.
Workers that render import this package: it does not import torch.
"""
from __future__ import annotations

from types import ModuleType

from ..runtime import UserError
from . import events, shapes
from .common import ClipSpec, scene_from_attributes

WORLDS: dict[str, ModuleType] = {"shapes": shapes, "events": events}


def world(name: str) -> ModuleType:
    if name not in WORLDS:
        raise UserError(f"data.world: unknown world {name!r}; known: {', '.join(WORLDS)}")
    return WORLDS[name]


__all__ = ["WORLDS", "ClipSpec", "world", "scene_from_attributes"]

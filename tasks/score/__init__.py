"""The strict scorer for the built-in worlds: per object and per event, with no pretrained model.

- objects (`objects.py`): pixels are explained as palette color over the background (any blend);
  connected components per color; an object is one component of its color in (nearly) every frame,
  with no speckle or second blob, a crisp edge, and a shape that fits an ideal circle, square or
  triangle by IoU with a margin over the others.
- motion (`motion.py`): the component's trajectory; a direction needs >= 20% of the frame of travel;
  a bounce is a fall to a trajectory minimum and a rebound, with the impact's time.
- sound (`sound.py`): per pitch band, steady tones and onsets; silence and noise give neither.
- scene (`scene.py`): objects matched to the expected scene by color; every attribute, the count and
  every impact (an onset of the object's pitch within one frame) decide "all correct"; majority and
  shuffled-prompt baselines beside every figure.
"""
from .scene import ATTRIBUTES, ClipScore, analyse_clip, score_clip, score_set, score_tensors

__all__ = ["ATTRIBUTES", "ClipScore", "analyse_clip", "score_clip", "score_set", "score_tensors"]

"""Registration of a section stack onto its middle section (keypoints + ANTs).

``register_sample(prepared, config, workdir)`` is the stage entry point (``python -m
asign_jax.register``); ``register_stack(images, points, cfg)`` is the lower-level function on
image paths/arrays and point dicts. Coordinates are full-resolution pixels (x=col, y=row).
"""

from asign_jax.registration.keypoints import available_matchers, register_matcher
from asign_jax.registration.result import RegisteredSample
from asign_jax.registration.stack import StackResult, register_sample, register_stack

__all__ = ["RegisteredSample", "StackResult", "available_matchers", "register_matcher",
           "register_sample", "register_stack"]

"""Registration of a section stack onto its middle section (keypoints + ANTs).

``stack.register_sample(prepared, config, workdir)`` is the stage entry point (``python -m
asign_jax.register``); ``stack.register_stack(images, points, cfg)`` is the lower-level function
on image paths/arrays and point dicts. Coordinates are full-resolution pixels (x=col, y=row).
The matcher is pluggable (``keypoints.register_matcher``).
"""

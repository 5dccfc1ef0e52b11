"""Imputing a user's block: manifest, virtual spots on image-only sections, the 3D volume.

``manifest.py`` (the block's sections), ``sources.py`` (readers, ``--train_with``),
``virtual.py`` (registration + virtual spot grids), ``model.py`` (train / checkpoint /
predict), ``volume.py`` (AnnData outputs), ``figures.py``, ``run.py`` (``impute_block``, what
``python -m asign_jax.impute`` runs).
"""

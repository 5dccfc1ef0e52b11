"""A HEST-1k folder (``data.format = "hest"``); by default the shared HER2ST subset converted
by ``experiments/to_hest.py`` (patient C = C2-C6 in ``section_order``, B4 extra 2D):

    python experiments/to_hest.py --config configs/her2st.py --out ../shared/hest_her2st
    python -m asign_jax.train --config configs/hest.py --workdir runs/hest

Everything else is configs/her2st.py's. For the real HEST-1k download set data.root to it and
select samples by id groups (``data.sections = "P:ID1,ID2,ID3"``, in section order) or by
``data.hest_filter = "patient=...,st_technology=Visium"``; pixel sizes come from the HEST
metadata and every px size of the config is at ``data.um_per_px`` (0.6875 µm/px).
"""

import importlib.util
from pathlib import Path


def get_config():
    spec = importlib.util.spec_from_file_location(
        "her2st_config", Path(__file__).with_name("her2st.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.data.format = "hest"
    c.data.root = "../shared/hest_her2st"
    c.data.sections = "C2,C3,C4,C5,C6,B4"   # grouped by metadata patient, section_order
    return c

"""The 3D spot graph: ``contract`` (what a sample graph is: ``SampleGraph``, ``SCALES``, edge
types, padding masks), ``build`` (IoU + cosine cross-layer and kNN same-layer edges), ``iou``,
``padding`` (fixed budgets, stacking) and ``io`` (``<workdir>/graphs/<sample>.npz``).

Only the graph stage itself imports ``build`` (and so scipy); models and losses need
``contract`` alone.
"""

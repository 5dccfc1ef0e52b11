"""Models: ASIGN (``asign.py``: MSAGNet + CLI) with its blocks (``attention.py``, ``gat.py``,
``cli.py``). ``factory.build_model(config, n_genes)`` turns ``config.model.name`` into a module;
a new model is one file here plus one line in ``factory.MODELS``."""

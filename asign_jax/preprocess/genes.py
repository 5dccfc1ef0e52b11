"""Gene selection: the top-N genes by mean raw count, averaged over sections.

Follows the official ``5_1_find_high_expression``: keep the genes present in every section,
take each gene's mean raw count over the spots of a section, average these per-section means
(each section weighs equally, whatever its spot count) and keep the N largest.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from asign_jax.data.section import Section, column_means
from asign_jax.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def common_genes(sections: Sequence[Section]) -> np.ndarray:
    """(C,) str, the genes present in every section, sorted by name."""
    if not sections:
        raise DataError("gene selection: no sections given")
    common = set(str(g) for g in sections[0].genes)
    for s in sections[1:]:
        common &= set(str(g) for g in s.genes)
    return np.asarray(sorted(common), dtype=str)


def mean_expression(sections: Sequence[Section], genes: np.ndarray) -> np.ndarray:
    """(C,) float64: per-section mean raw count of each gene, averaged over sections."""
    total = np.zeros(len(genes), dtype=np.float64)
    for s in sections:
        if s.n_spots == 0:
            raise DataError(f"section {s.name!r}: has no spots; cannot compute gene means")
        index = {str(g): i for i, g in enumerate(s.genes)}
        cols = np.fromiter((index[g] for g in genes), dtype=np.int64, count=len(genes))
        total += column_means(s.counts, cols)
    return total / len(sections)


def select_genes(sections: Sequence[Section], n: int,
                 rank_sections: Sequence[Section] | None = None) -> np.ndarray:
    """Selects the ``n`` most expressed genes common to all ``sections``.

    Score = mean over ``rank_sections`` (default: all ``sections``) of (mean raw count over
    the section's spots), so every section weighs equally. Sorted by score descending; equal
    scores are ordered by gene name (ascending) so the result is deterministic.

    Args:
      sections: every section that will be used (training and held-out alike); a gene must be
        present in all of them.
      n: number of genes to keep (> 0).
      rank_sections: the sections whose counts rank the genes (``data.gene_selection_sections``,
        e.g. the training sections only); None = ``sections`` (the paper and official code).

    Returns:
      (n,) str gene names, most expressed first.
    """
    if int(n) <= 0:
        raise ConfigError(f"data.n_genes must be > 0, got {n}")
    n = int(n)
    genes = common_genes(sections)
    if len(genes) < n:
        raise DataError(
            f"gene selection: only {len(genes)} genes are present in all {len(sections)} "
            f"sections ({[s.name for s in sections]}), fewer than data.n_genes={n}; "
            "lower --config.data.n_genes or drop the section with the fewest genes")
    ranking = list(sections) if rank_sections is None else list(rank_sections)
    score = mean_expression(ranking, genes)
    order = np.lexsort((genes, -score))  # last key is primary: score desc, then name asc
    chosen = genes[order[:n]]
    logger.info("selected %d of %d common genes, ranked over %d sections (%s; top: %s)", n,
                len(genes), len(ranking), ",".join(s.name for s in ranking),
                ", ".join(chosen[:5]))
    return chosen

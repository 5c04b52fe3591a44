"""The published numbers of Kuratov et al. 2025 that the report puts beside models whose name
matches: Table 1 (one vector) and Figure 4 (capacity by number of vectors, PG-19)."""
from __future__ import annotations

import re

# Kuratov, Arkhipov, Bulatov, Burtsev (2025), arXiv 2502.13063, Table 1 (one vector):
# d, V, MaxCap, PG-19 capacity / token gain / CE reduction, random capacity / gain / CE red.
PAPER_TABLE1 = {
    "Pythia-160M": (768, 50304, 787, 80, 70.9, 396, 65, 61.3, 501),
    "Pythia-410M": (1024, 50304, 1049, 96, 81.3, 431, 72, 76.9, 630),
    "Pythia-1.4B": (2048, 50304, 2098, 160, 158.0, 793, 139, 144.4, 1108),
    "Pythia-2.8B": (2560, 50304, 2623, 128, 150.1, 740, 129, 134.0, 1024),
    "OPT-1.3B": (2048, 50272, 2098, 128, 132.2, 713, 116, 129.3, 1066),
    "OLMo-1B": (2048, 50304, 2098, 384, 406.3, 1901, 249, 257.3, 1852),
    "Sheared-LLaMA-1.3B": (2048, 32000, 2190, 512, 383.6, 1835, 382, 315.1, 1893),
    "Llama-3.2-1B": (2048, 128256, 1931, 512, 426.2, 2120, 316, 294.9, 2265),
    "Llama-3.2-3B": (3072, 128256, 2897, 1024, 720.3, 3292, 460, 456.9, 3383),
    "Llama-3.1-8B": (4096, 128256, 3862, 1568, 1094.1, 4866, 792, 623.2, 4541),
}
# Figure 4, PG-19: capacity in tokens by number of vectors.
PAPER_FIG4 = {
    "Pythia-160M": {1: 80, 2: 192, 4: 384, 8: 640, 16: 1280, 32: 2016},
    "Llama-3.2-1B": {1: 512, 2: 1024, 4: 2048, 8: 4096, 16: 7168},
}


def _norm(name: str) -> str:
    s = re.sub(r"[^a-z0-9.]", "", name.lower().rstrip("/").split("/")[-1])
    return re.sub(r"(hf|deduped)$", "", re.sub(r"^meta(?=llama)", "", s))


def published(model_label: str):
    """The paper's Table 1 entry for a model (matched on its name), or None."""
    target = _norm(model_label)
    for name, values in PAPER_TABLE1.items():
        if _norm(name) == target:
            return name, values
    return None

"""Offer matching rules. Pure: no I/O."""

from __future__ import annotations

import re

# "NVIDIA H100 80GB HBM3", "H100-SXM5", "gpu_1x_h100_pcie" → "H100"; "A10" never matches "A100".
_FAMILY = re.compile(
    r"(?<![A-Z0-9])(GH200|B200|H200|H100|A100|A10G|A10|A6000|A40|L40S|L40|L4|V100|T4|RTX\s?\d{4})(?![0-9])"
)


def gpu_family(name: str) -> str:
    """Normalise a GPU name to its family; unknown names compare by their upper-cased text."""
    text = name.upper().replace("_", " ")
    match = _FAMILY.search(text)
    return match.group(1).replace(" ", "") if match else text.strip()

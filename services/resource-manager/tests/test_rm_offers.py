from __future__ import annotations

import pytest

from neobatch.resource_manager.offers import gpu_family


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("H100", "NVIDIA H100", True),
        ("H100-SXM5", "NVIDIA H100 80GB HBM3", True),
        ("gpu_1x_h100_pcie", "H100", True),
        ("A10", "A100", False),
        ("gpu_1x_a10", "gpu_8x_a100_80gb_sxm4", False),
        ("NVIDIA A100-SXM4-80GB", "A100", True),
    ],
)
def test_gpu_families(a: str, b: str, same: bool) -> None:
    assert (gpu_family(a) == gpu_family(b)) is same

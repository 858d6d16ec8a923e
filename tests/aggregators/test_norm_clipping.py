"""The shared body of the norm-clipping pre-aggregators (static clipping and ARC)."""

from __future__ import annotations

import pytest
import torch

from resam_flower.aggregators import NonFiniteInputError
from resam_flower.aggregators.arc import AdaptiveRobustClipping
from resam_flower.aggregators.clipping import Clipping, NormClipping


class _Median(NormClipping):
    """A toy rule of the family: clip to the lower median norm."""

    name = "median-clip"

    def _threshold(self, norms: torch.Tensor, f: int) -> torch.Tensor:
        self.last_info["f_seen"] = f
        return norms.median()


def test_a_subclass_only_chooses_the_threshold():
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 2.0], [float("nan"), 0.0]], dtype=torch.float64)
    pre = _Median(f=1)
    out, f = pre.apply(x, 1)
    assert f == 0
    torch.testing.assert_close(out, torch.tensor([[1.2, 1.6], [0.0, 1.0], [0.0, 2.0]], dtype=torch.float64))
    assert pre.last_info == {"nonfinite_rows": 1, "f_seen": 0, "clipped": 1}


def test_arc_with_nothing_to_clip_returns_the_input_itself():
    x = torch.tensor([[1.0, 0.0], [0.0, -5.0], [2.0, 0.0]])
    pre = AdaptiveRobustClipping(f=0)
    assert pre(x) is x
    assert pre.last_info == {"nonfinite_rows": 0, "k": 0, "clipped": 0, "threshold": 5.0}


@pytest.mark.parametrize("pre", [Clipping(f=2, c=1.0), AdaptiveRobustClipping(f=2), _Median(f=2)])
def test_every_row_non_finite_raises_even_within_f(pre):
    with pytest.raises(NonFiniteInputError, match=rf"{pre.name}: all 2 inputs are non-finite"):
        pre(torch.tensor([[float("inf"), 0.0], [0.0, float("nan")]]))

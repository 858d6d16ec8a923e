"""Label flipping: a data attack, executed by the Byzantine client on its own training labels."""

from __future__ import annotations

import torch

from .base import Attack, check_int, honest_mean, replicate

__all__ = ["LabelFlipping", "flip_labels"]


def flip_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    r"""Map every label :math:`y \in \{0, \dots, C-1\}` to :math:`C - 1 - y` (same dtype and device).

    Raises :class:`ValueError` for ``num_classes < 2`` or a label outside ``[0, C)``, and
    :class:`TypeError` for non-integer labels.
    """
    num_classes = check_int("num_classes", num_classes, low=2)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"flip_labels expects a torch.Tensor of labels, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"flip_labels expects integer labels, got {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got values in [{int(y.min())}, {int(y.max())}]"
        )
    return (num_classes - 1) - y


class LabelFlipping(Attack):
    r"""Label flipping: a Byzantine worker trains on labels :math:`y \mapsto C - 1 - y` (:func:`flip_labels`).

    A data attack: the poisoning happens on the Byzantine client, before its gradient is computed, so it
    needs no honest vectors and runs on real devices. As a vector attack (ByzFL's convention), the input
    is taken to be the gradients the Byzantine workers computed on flipped labels and each forged vector
    is their mean; :meth:`corrupt_own` returns the node's own update unchanged.
    """

    name = "lf"
    needs_honest = False
    data_attack = True

    def _forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        if honest.shape[0] == 0:
            raise ValueError("lf (as a vector attack) needs the Byzantine workers' flipped-label vectors")
        return replicate(honest_mean(honest), f)

    def corrupt_own(self, own: torch.Tensor) -> torch.Tensor:
        if not isinstance(own, torch.Tensor) or not own.is_floating_point():
            raise TypeError(f"{self.name} expects a floating-point torch.Tensor, got {own!r:.80}")
        return own

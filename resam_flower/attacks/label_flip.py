r"""Label flipping: data attacks, executed by the Byzantine clients on flipped training labels.

Two variants, both with the flip :math:`y \mapsto C - 1 - y` (:func:`flip_labels`):

* ``lf`` (:class:`LabelFlipping`, the default): each Byzantine node trains on the flipped labels of *its
  own* data and replies like an honest worker, momentum included: it sends its own flipped-label
  momentum. It needs nothing but its own data, so it also runs on real devices.
* ``lf-lab`` (:class:`LabLabelFlipping`): the variant of the RESAM authors' lab. Every Byzantine node sends
  the *mean of the honest workers' flipped-label gradients* of the round, with no momentum:
  LPD-EPFL/byzfl (``byzfl/benchmark/train.py``: ``attack_input = [client.get_flat_flipped_gradients() for
  client in honest_clients]``; each honest client computes, on its own mini-batch of the step, the gradient
  for ``targets.sub(C - 1).mul(-1)``; ``LabelFlipping`` returns their mean, repeated ``f`` times) and
  LPD-EPFL/robust-collaborative-learning (``attacks/labelflipping.py``: the mean of ``grads_flipped``, the
  honest workers' gradients on label-flipped batches, each clipped like an honest gradient). It is
  omniscient (it needs the honest workers' data and mini-batches): simulation only.

As vector attacks (ByzFL's convention), both take the flipped-label vectors as input and send their mean.
"""

from __future__ import annotations

import torch

from .base import Attack, check_int, honest_mean, replicate

__all__ = ["LabelFlipping", "LabLabelFlipping", "flip_labels"]


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
    r"""Label flipping, our default: a Byzantine worker trains on its own labels :math:`y \mapsto C - 1 - y`.

    A data attack: the poisoning happens on the Byzantine client, before its gradient is computed, so it
    needs no honest vectors and runs on real devices; the node's momentum is applied as for an honest
    worker. As a vector attack (ByzFL's convention), the input is taken to be the gradients the Byzantine
    workers computed on flipped labels and each forged vector is their mean; :meth:`corrupt_own` returns
    the node's own update unchanged.
    """

    name = "lf"
    needs_honest = False
    data_attack = True
    client_role = "lf"

    def _forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        if honest.shape[0] == 0:
            raise ValueError("lf (as a vector attack) needs the Byzantine workers' flipped-label vectors")
        return replicate(honest_mean(honest), f)

    def corrupt_own(self, own: torch.Tensor) -> torch.Tensor:
        if not isinstance(own, torch.Tensor) or not own.is_floating_point():
            raise TypeError(f"{self.name} expects a floating-point torch.Tensor, got {own!r:.80}")
        return own


class LabLabelFlipping(Attack):
    r"""The lab's label flipping: every Byzantine node sends :math:`\frac{1}{h}\sum_{i \in H} \tilde g_i`.

    :math:`\tilde g_i` is the gradient honest worker ``i`` would compute this round on its own mini-batch
    with flipped labels (with the same worker-side weight decay and clipping as its honest gradient), and no
    momentum is applied to it (see the module docstring for the lab's code). In simulation the Byzantine
    nodes compute it themselves (role ``lf-lab``; the server sends them the honest nodes' data partitions,
    from which they redraw the honest mini-batches): see :mod:`resam_flower.app.worker`. As a vector
    attack, the input is the honest workers' flipped-label gradients and the output ``f`` copies of
    their mean.
    """

    name = "lf-lab"
    needs_honest = True  # the honest workers' data: cannot run on a device alone
    data_attack = True
    client_role = "lf-lab"
    needs_honest_data = True

    def _forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        return replicate(honest_mean(honest), f)

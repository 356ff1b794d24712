"""Where book-keeping's rules put a clipped sum: added to the parameter's ``.grad`` where the step put something
there first (this step's noise: ``noise_first`` in client/privacy/dp_optimizer.py), else as its ``.grad``.

Adding into the noise saves the DP step a pass over every trained parameter and a buffer per parameter; a matrix
product adds into it inside BLAS (``addmm_``), at no cost beyond the product itself.
"""

from __future__ import annotations

import torch

__all__ = ["add_to_grad", "add_product_to_grad"]


def add_to_grad(p: torch.Tensor, value: torch.Tensor) -> None:
    """``p.grad`` += ``value`` (shaped like ``p``), or ``p.grad`` = ``value`` where it is None."""
    if p.grad is None:
        p.grad = value.view_as(p)
    else:
        p.grad.add_(value.view_as(p))


def add_product_to_grad(p: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """``p.grad`` += ``left`` @ ``right`` (2-D, shaped like ``p``), or ``p.grad`` = the product where it is None."""
    if p.grad is None:
        p.grad = torch.mm(left, right)
    elif p.grad.dtype == left.dtype == right.dtype and p.grad.is_contiguous():
        p.grad.addmm_(left, right)
    else:
        p.grad.add_(torch.mm(left, right))

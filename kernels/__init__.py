"""Functional attention ops with backend dispatch: no parameters, only tensors in and out.

``na2d`` (neighborhood attention) and ``gather_attention`` (attention over listed keys) run on the
exact ``torch`` reference backend everywhere; faster backends register themselves in
:mod:`attnzoo.kernels._dispatch` and are chosen by ``backend=``, :func:`use_backend` or the
``ATTNZOO_BACKEND`` environment variable. Dense attention is
``torch.nn.functional.scaled_dot_product_attention``; there is no wrapper of our own.
"""

from ._dispatch import AUTO_ORDER, BACKENDS, BackendError, available_backends, use_backend
from .ops import gather_attention, na2d
from .torch_backend import na2d_attention_weights, neighborhood_indices

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "BackendError",
    "available_backends",
    "gather_attention",
    "na2d",
    "na2d_attention_weights",
    "neighborhood_indices",
    "use_backend",
]

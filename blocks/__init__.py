"""Token mixers (the seven mechanisms) and the transformer block around them.

Every mixer takes and returns channels-last maps ``(B, H, W, C)`` and is built on
:mod:`attnzoo.kernels` and ``torch.nn.functional.scaled_dot_product_attention``.
"""

"""DaViT's dual attention: spatial window attention and channel group attention, and the DaViT blocks.

Ding, Xiao, Codella, Luo, Wang, Yuan. "DaViT: Dual Attention Vision Transformers", ECCV 2022
(arXiv 2204.03645). Authors' code: dingmyu/davit ``timm/models/davit.py``; the weights are re-hosted
by timm (``timm.models.davit``), whose parameter names (``cpe1``/``cpe2`` for the official
``cpe.0``/``cpe.1``) these modules use so that timm's DaViT block weights load by name.

The two mixers are complementary: spatial tokens attend within non-overlapping windows (local,
linear in the number of pixels), while channel groups attend to each other over the *whole* image
(a ``d x d`` map per group, also linear in the number of pixels), so a spatial block followed by a
channel block mixes locally and globally without any ``N x N`` attention matrix.
:class:`DualAttention` is the ``create_mixer("dual")`` entry: either attention, chosen by name, so a
stack of generic blocks alternating ``"spatial"`` / ``"channel"`` mixes tokens as DaViT does.
Everything here is channels-last ``(B, H, W, C)``; the depthwise position convolution runs on a
permuted view, which is the channels_last memory format, so eagerly no copies are made around it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from ._common import check_dim_heads, check_fraction, check_map, check_odd, check_positive_int, conv_channels_last


def _check_mlp_ratio(mlp_ratio: object) -> float:
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)):
        raise TypeError(f"mlp_ratio must be a real number, got {type(mlp_ratio).__name__} {mlp_ratio!r}")
    if not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
    return float(mlp_ratio)


def _window_attention(x: torch.Tensor, qkv: nn.Module, num_heads: int, window_size: int) -> torch.Tensor:
    """Per-window MHSA on a zero-padded map, cropped back; returns the map before ``proj``."""
    batch, height, width, dim = x.shape
    ws, head_dim = window_size, dim // num_heads
    rows, cols = (height + ws - 1) // ws, (width + ws - 1) // ws
    pad_b, pad_r = rows * ws - height, cols * ws - width
    # compiled: pad unconditionally (a no-op when divisible) so dynamic shapes need no guard on divisibility
    if torch.compiler.is_compiling() or pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    # (B, rows, ws, cols, ws, 3, heads, d) -> (3, B*rows*cols, heads, ws*ws, d)
    qkv_out = qkv(x).view(batch, rows, ws, cols, ws, 3, num_heads, head_dim)
    q, k, v = qkv_out.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, -1, num_heads, ws * ws, head_dim).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v)  # default scale d^-0.5, as DaViT
    out = out.view(batch, rows, cols, num_heads, ws, ws, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
    # proj is per token, so the callers projecting after this crop equals DaViT's project-then-crop
    return out.reshape(batch, rows * ws, cols * ws, dim)[:, :height, :width]


def _channel_attention(x: torch.Tensor, qkv: nn.Module, num_heads: int) -> torch.Tensor:
    """DaViT's channel-group attention; returns the map before ``proj``."""
    batch, height, width, dim = x.shape
    head_dim = dim // num_heads
    q, k, v = qkv(x).view(batch, height * width, 3, num_heads, head_dim).unbind(2)
    k = k * head_dim**-0.5
    attn = torch.einsum("bnhi,bnhj->bhij", k, v).softmax(dim=-1)  # (B, heads, d, d)
    out = torch.einsum("bhij,bnhj->bnhi", attn.to(q.dtype), q)
    return out.reshape(batch, height, width, dim)


class SpatialWindowAttention(nn.Module):
    """DaViT's spatial attention: multi-head self-attention inside non-overlapping windows.

    Unlike Swin there is no relative position bias and no shift (DaViT's ``ConvPosEnc`` supplies the
    position information and the channel blocks the cross-window mixing). Maps whose sides are not
    multiples of ``window_size`` are zero-padded at the bottom/right *before* ``qkv`` and the padded
    tokens take part in attention unmasked (their keys/values are the ``qkv`` bias), exactly as the
    released weights were trained and evaluated. Parameters: ``qkv``, ``proj``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, qkv_bias: bool = True):
        super().__init__()
        self.head_dim = check_dim_heads(dim, num_heads)
        self.window_size = check_positive_int("window_size", window_size)
        self.dim = dim
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_map(x, self.dim)
        return self.proj(_window_attention(x, self.qkv, self.num_heads, self.window_size))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}"


class ChannelGroupAttention(nn.Module):
    """DaViT's channel attention: channel groups (= heads) attend to each other over all pixels.

    Per group of ``d = dim / num_heads`` channels, keys and values build a ``d x d`` map
    ``A = softmax_j(sum_n k[n, i] v[n, j] / sqrt(d))`` that then mixes the queries' channels:
    ``out[n, i] = sum_j A[i, j] q[n, j]`` (DaViT's operand roles: k/v build the map, q is aggregated).
    The cost is linear in the number of pixels and no token-by-token matrix exists, so SDPA (whose
    fused kernels need the pixel count as head dimension here) is not used. Parameters: ``qkv``, ``proj``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.head_dim = check_dim_heads(dim, num_heads)
        self.dim = dim
        self.num_heads = num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_map(x, self.dim)
        return self.proj(_channel_attention(x, self.qkv, self.num_heads))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


_ATTENTIONS = ("spatial", "channel")


class DualAttention(nn.Module):
    """Either of DaViT's attentions, chosen by ``attention``: the mixer that ``create_mixer("dual")`` builds.

    ``"spatial"`` computes :class:`SpatialWindowAttention`, ``"channel"`` :class:`ChannelGroupAttention`
    (``window_size`` is then unused). Generic blocks alternating the two reproduce DaViT's token mixing;
    DaViT's own blocks also add ``ConvPosEnc`` (use :class:`DaViTBlockPair` for those). Parameters are
    ``qkv`` and ``proj`` as in timm's ``attn`` modules, so a block's ``attn.*`` keys map to ``mixer.*``.
    """

    def __init__(
        self, dim: int, num_heads: int, attention: str = "spatial", window_size: int = 7, qkv_bias: bool = True
    ):
        super().__init__()
        if not isinstance(attention, str):
            raise TypeError(f"attention must be a str, one of {_ATTENTIONS}, got {type(attention).__name__}")
        if attention not in _ATTENTIONS:
            raise ValueError(f"attention must be one of {_ATTENTIONS}, got {attention!r}")
        self.head_dim = check_dim_heads(dim, num_heads)
        self.window_size = check_positive_int("window_size", window_size)
        self.dim = dim
        self.num_heads = num_heads
        self.attention = attention
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_map(x, self.dim)
        if self.attention == "spatial":  # fixed at construction: no data-dependent branch
            return self.proj(_window_attention(x, self.qkv, self.num_heads, self.window_size))
        return self.proj(_channel_attention(x, self.qkv, self.num_heads))

    def extra_repr(self) -> str:
        window = f", window_size={self.window_size}" if self.attention == "spatial" else ""
        return f"dim={self.dim}, num_heads={self.num_heads}, attention={self.attention!r}{window}"


class ConvPosEnc(nn.Module):
    """DaViT's conditional position encoding ``x + act(DWConv_k(x))`` on channels-last maps.

    ``proj`` is the depthwise ``nn.Conv2d`` of the checkpoints (weight ``(C, 1, k, k)``, with bias).
    """

    def __init__(self, dim: int, k: int = 3, act: bool = False):
        super().__init__()
        dim = check_positive_int("dim", dim)
        k = check_odd("k", k)
        self.proj = nn.Conv2d(dim, dim, kernel_size=k, padding=k // 2, groups=dim)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = conv_channels_last(self.proj, x)
        return x + self.act(feat)


class _DaViTBlock(nn.Module):
    """``s = cpe1(x); x = s + DP(attn(norm1(s))); x = cpe2(x); x = x + DP(mlp(norm2(x)))``."""

    def __init__(
        self,
        dim: int,
        attn: nn.Module,
        mlp_ratio: float,
        drop_path: float,
        act_layer: type[nn.Module],
        norm_layer: type[nn.Module],
        ffn: bool,
        cpe_act: bool,
    ):
        super().__init__()
        mlp_ratio = _check_mlp_ratio(mlp_ratio)
        drop_path = check_fraction("drop_path", drop_path, 0.0, 1.0)
        self.dim = dim
        self.cpe1 = ConvPosEnc(dim, k=3, act=cpe_act)
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.cpe2 = ConvPosEnc(dim, k=3, act=cpe_act)
        if ffn:
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)
            self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        else:
            self.norm2 = self.mlp = self.drop_path2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_map(x, self.dim)
        shortcut = self.cpe1(x)
        x = shortcut + self.drop_path1(self.attn(self.norm1(shortcut)))
        x = self.cpe2(x)
        if self.mlp is not None:
            x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


class SpatialBlock(_DaViTBlock):
    """DaViT's spatial block around :class:`SpatialWindowAttention`, channels-last.

    Names follow timm's ``davit.SpatialBlock`` (``cpe1.proj``, ``norm1``, ``attn.qkv``, ``attn.proj``,
    ``cpe2.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``). With ``ffn=False`` the block has no MLP
    (timm's own ``ffn=False`` spatial block cannot run; this one simply skips the MLP).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        ffn: bool = True,
        cpe_act: bool = False,
    ):
        attn = SpatialWindowAttention(dim, num_heads, window_size=window_size, qkv_bias=qkv_bias)
        super().__init__(dim, attn, mlp_ratio, drop_path, act_layer, norm_layer, ffn, cpe_act)


class ChannelBlock(_DaViTBlock):
    """DaViT's channel block around :class:`ChannelGroupAttention`, channels-last; names as timm's."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        ffn: bool = True,
        cpe_act: bool = False,
    ):
        attn = ChannelGroupAttention(dim, num_heads, qkv_bias=qkv_bias)
        super().__init__(dim, attn, mlp_ratio, drop_path, act_layer, norm_layer, ffn, cpe_act)


class DaViTBlockPair(nn.Sequential):
    """One DaViT "dual attention block": :class:`SpatialBlock` then :class:`ChannelBlock`.

    A ``Sequential`` so its keys (``0.*`` spatial, ``1.*`` channel) equal those of timm's
    ``stages.{i}.blocks.{j}``. ``drop_path`` is one rate for both blocks (timm) or a
    ``(spatial, channel)`` pair (the official code's per-block schedule).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float | tuple[float, float] = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        ffn: bool = True,
        cpe_act: bool = False,
    ):
        if isinstance(drop_path, (tuple, list)):
            if len(drop_path) != 2:
                raise ValueError(f"drop_path must be a rate or a (spatial, channel) pair, got {drop_path!r}")
            dp_spatial, dp_channel = drop_path
        else:
            dp_spatial = dp_channel = drop_path
        common = dict(
            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, act_layer=act_layer, norm_layer=norm_layer, ffn=ffn, cpe_act=cpe_act
        )
        super().__init__(
            SpatialBlock(dim, num_heads, window_size=window_size, drop_path=dp_spatial, **common),
            ChannelBlock(dim, num_heads, drop_path=dp_channel, **common),
        )


__all__ = [
    "ChannelBlock",
    "ChannelGroupAttention",
    "ConvPosEnc",
    "DaViTBlockPair",
    "DualAttention",
    "SpatialBlock",
    "SpatialWindowAttention",
]

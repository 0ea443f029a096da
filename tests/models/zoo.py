"""A deterministic zoo of small models in the shapes of real architectures.

Each entry builds its module with a fixed seed (without touching the global RNG) and returns
``(module.eval(), example_inputs)``. Sizes are small so that tests stay fast, but every model
keeps the structure that makes its family hard for a compiler: batch norm folded into convs,
depthwise convs with hard activations, erf-GELU attention, RoPE with grouped-query attention,
group norm with cross-attention and upsampling, 1-D convs feeding a transformer.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ZOO", "INPUTS", "VOCAB", "build", "calibration_inputs", "torch_outputs",
           "rel_error"]

VOCAB = 128


def _randomize(model: nn.Module, gen: torch.Generator) -> None:
    """Give norms non-trivial statistics and affine parameters (fresh ones are identities)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.2, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, RMSNorm)):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                bias = getattr(m, "bias", None)
                if bias is not None:
                    bias.uniform_(-0.2, 0.2, generator=gen)


# --- ResNet-style CNN ---------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(y + skip)


class ResNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --- MobileNet-style depthwise net --------------------------------------------------------------


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(c // r, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, hidden: int, stride: int, act: type[nn.Module],
                 se: bool) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False),
                                    nn.BatchNorm2d(hidden), act())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), act())
        self.se = SqueezeExcite(hidden) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class MobileNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.Hardswish())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 32, 1, nn.ReLU6, se=False),
            InvertedResidual(16, 24, 48, 2, nn.Hardswish, se=True),
            InvertedResidual(24, 24, 72, 1, nn.Hardswish, se=True),
        )
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64),
                                  nn.Hardswish())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.pool(x).flatten(1))


# --- ViT-style encoder --------------------------------------------------------------------------


class ViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 4, patch: int = 4,
                 image: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        n = (image // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim))
        self.blocks = nn.ModuleList(ViTBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


# --- Llama-style decoder ------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q_proj = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, dim, bias=False)

    def _repeat_kv(self, x: torch.Tensor) -> torch.Tensor:
        b, h, t, d = x.shape
        rep = self.heads // self.kv_heads
        return x[:, :, None, :, :].expand(b, h, rep, t, d).reshape(b, h * rep, t, d)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = self._repeat_kv(k), self._repeat_kv(v)
        scores = q @ k.transpose(2, 3) / math.sqrt(self.head_dim) + mask
        p = F.softmax(scores.float(), dim=-1).type_as(q)
        return self.o_proj((p @ v).transpose(1, 2).reshape(b, t, -1))


class LlamaMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaLayer(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = LlamaAttention(dim, heads, kv_heads)
        self.post_attention_layernorm = RMSNorm(dim)
        self.mlp = LlamaMLP(dim, hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, vocab: int = VOCAB, dim: int = 64, layers: int = 2, heads: int = 4,
                 kv_heads: int = 2, hidden: int = 128) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(LlamaLayer(dim, heads, kv_heads, hidden)
                                    for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        head_dim = dim // heads
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        pos = torch.arange(t, device=input_ids.device).float()
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        mask = torch.full((t, t), float("-inf")).triu(1)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.norm(x))


# --- Stable-Diffusion-style UNet block ----------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, groups: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, self.heads, c // self.heads).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


class GEGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class SpatialTransformer(nn.Module):
    def __init__(self, c: int, context_dim: int, heads: int, groups: int = 8) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, c)
        self.proj_in = nn.Conv2d(c, c, 1)
        self.norm1 = nn.LayerNorm(c)
        self.attn1 = CrossAttention(c, c, heads)
        self.norm2 = nn.LayerNorm(c)
        self.attn2 = CrossAttention(c, context_dim, heads)
        self.norm3 = nn.LayerNorm(c)
        self.ff = nn.Sequential(GEGLU(c, c * 2), nn.Linear(c * 2, c))
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        n1 = self.norm1(y)
        y = y + self.attn1(n1, n1)
        y = y + self.attn2(self.norm2(y), context)
        y = y + self.ff(self.norm3(y))
        return x + self.proj_out(y.transpose(1, 2).reshape(b, c, h, w))


class UNetBlock(nn.Module):
    def __init__(self, cin: int = 4, c: int = 32, c2: int = 64, temb: int = 64,
                 context_dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.c = c
        self.conv_in = nn.Conv2d(cin, c, 3, padding=1)
        self.time_embed = nn.Sequential(nn.Linear(c, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.res = ResBlock(c, c2, temb)
        self.attn = SpatialTransformer(c2, context_dim, heads)
        self.up_conv = nn.Conv2d(c2, c2, 3, padding=1)
        self.norm_out = nn.GroupNorm(8, c2)
        self.conv_out = nn.Conv2d(c2, cin, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.c))
        h = self.attn(self.res(self.conv_in(x), emb), context)
        h = self.up_conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


# --- Whisper-like audio encoder ----------------------------------------------------------------


def sinusoids(length: int, channels: int) -> torch.Tensor:
    inc = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


class AudioAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, -1).permute(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.permute(0, 2, 1, 3).flatten(2))


class AudioBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn_ln = nn.LayerNorm(dim)
        self.attn = AudioAttention(dim, heads)
        self.mlp_ln = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Linear(dim * 4, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    def __init__(self, n_mels: int = 16, frames: int = 64, dim: int = 32, heads: int = 4
                 ) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(frames // 2, dim))
        self.blocks = nn.ModuleList([AudioBlock(dim, heads)])
        self.ln_post = nn.LayerNorm(dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x))
        x = x.permute(0, 2, 1)
        x = x + self.positional_embedding[: x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


# --- registry -----------------------------------------------------------------------------------


def _images(batch: int) -> Callable[[torch.Generator], tuple[torch.Tensor, ...]]:
    return lambda g: (torch.randn(batch, 3, 32, 32, generator=g),)


def _tokens(g: torch.Generator) -> tuple[torch.Tensor, ...]:
    return (torch.randint(0, VOCAB, (1, 16), generator=g),)


def _unet_inputs(g: torch.Generator) -> tuple[torch.Tensor, ...]:
    return (torch.randn(1, 4, 8, 8, generator=g),
            torch.rand(1, generator=g) * 1000.0,
            torch.randn(1, 8, 32, generator=g))


def _mel(g: torch.Generator) -> tuple[torch.Tensor, ...]:
    return (torch.randn(1, 16, 64, generator=g),)


_MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[torch.Generator], tuple]]] = {
    "resnet": (ResNet, _images(1)),
    "mobilenet": (MobileNet, _images(1)),
    "vit": (ViT, _images(2)),
    "llama": (Llama, _tokens),
    "unet": (UNetBlock, _unet_inputs),
    "whisper": (AudioEncoder, _mel),
}

#: name -> input generator (a ``torch.Generator`` in, one input tuple out)
INPUTS: dict[str, Callable[[torch.Generator], tuple[torch.Tensor, ...]]] = {
    name: inputs for name, (_, inputs) in _MODELS.items()
}


def _seed(name: str, index: int) -> int:
    return zlib.crc32(f"{name}:{index}".encode())


def build(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Build zoo model ``name`` (deterministic weights) and its example inputs."""
    ctor, inputs = _MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(name, -1))
        model = ctor()
        gen = torch.Generator().manual_seed(_seed(name, -2))
        _randomize(model, gen)
        if isinstance(model, ViT):
            with torch.no_grad():
                model.cls_token.normal_(0, 0.02, generator=gen)
                model.pos_embed.normal_(0, 0.02, generator=gen)
    example = inputs(torch.Generator().manual_seed(_seed(name, 0)))
    return model.eval(), example


def calibration_inputs(name: str, n: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """``n`` deterministic input tuples for zoo model ``name`` (distinct from the example)."""
    inputs = INPUTS[name]
    for i in range(1, n + 1):
        yield inputs(torch.Generator().manual_seed(_seed(name, i)))


#: name -> factory returning ``(module, example_inputs)``
ZOO: dict[str, Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]] = {
    name: (lambda name=name: build(name)) for name in _MODELS
}


def torch_outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """The model's outputs on ``inputs``, flattened in ``torch.export`` order, as numpy."""
    with torch.no_grad():
        out = model(*inputs)
    flat, _ = torch.utils._pytree.tree_flatten(out)
    return [t.detach().numpy() for t in flat if isinstance(t, torch.Tensor)]


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """``max|got - want| / max|want|`` (exact comparison, 0 or inf, for bools and integers)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return float("inf")
    if want.dtype.kind in "biu":
        return 0.0 if np.array_equal(got, want) else float("inf")
    if want.size == 0:
        return 0.0
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    if not np.array_equal(np.isnan(g64), np.isnan(w64)):
        return float("inf")
    g64, w64 = np.nan_to_num(g64, posinf=1e300, neginf=-1e300), np.nan_to_num(
        w64, posinf=1e300, neginf=-1e300)
    scale = max(float(np.max(np.abs(w64))), 1e-12)
    return float(np.max(np.abs(g64 - w64))) / scale

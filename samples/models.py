"""Small model families in torch, used as sources and targets for front-onnx.

Each family exists at several sizes (narrower, wider, shallower, deeper) so that
transfers in width and depth can be exercised end to end through ONNX.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn
import torch.nn.functional as F


# ---------------------------------------------------------------- ViT (DeiT-like)
@dataclass(frozen=True)
class ViTConfig:
    image: int = 8
    patch: int = 2
    channels: int = 1
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 2
    classes: int = 10


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)  # fused qkv: its output is split into 3 parts
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        if causal:
            mask = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)
            att = att.masked_fill(mask, float("-inf"))
        att = att.softmax(dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), causal=self.causal)
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(cfg.channels, cfg.dim, cfg.patch, stride=cfg.patch)
        n = (cfg.image // cfg.patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


# ---------------------------------------------------------------- ResNet-like CNN
@dataclass(frozen=True)
class ResNetConfig:
    channels: int = 1
    widths: tuple[int, ...] = (16, 32, 64)
    depths: tuple[int, ...] = (2, 2, 2)
    classes: int = 10


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w0 = cfg.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(cfg.channels, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU())
        layers = []
        cin = w0
        for i, (w, d) in enumerate(zip(cfg.widths, cfg.depths)):
            blocks = [BasicBlock(cin, w, 1 if i == 0 else 2)]
            blocks += [BasicBlock(w, w, 1) for _ in range(d - 1)]
            layers.append(nn.Sequential(*blocks))
            cin = w
        self.layers = nn.ModuleList(layers)
        self.fc = nn.Linear(cin, cfg.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.fc(x.mean(dim=(2, 3)))


# ---------------------------------------------------------------- GPT-like decoder
@dataclass(frozen=True)
class GPTConfig:
    vocab: int = 64
    context: int = 16
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab, cfg.dim)
        self.wpe = nn.Embedding(cfg.context, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio, causal=True) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for blk in self.blocks:
            x = blk(x)
        return self.lm_head(self.ln_f(x))


# ---------------------------------------------------------------- the families
FAMILIES = {
    "vit": (ViT, ViTConfig()),
    "resnet": (ResNet, ResNetConfig()),
    "gpt": (GPT, GPTConfig()),
}

# Sizes relative to each family's base: (width factor, depth change).
SIZES = ("base", "narrow", "wide", "shallow", "deep")


def config_for(family: str, size: str):
    """The configuration of one family at one named size."""
    _, base = FAMILIES[family]
    if family == "resnet":
        w, d = base.widths, base.depths
        table = {
            "base": (w, d),
            "narrow": (tuple(x // 2 for x in w), d),
            "wide": (tuple(x * 2 for x in w), d),
            "shallow": (w, tuple(max(1, x - 1) for x in d)),
            "deep": (w, tuple(x + 1 for x in d)),
        }
        widths, depths = table[size]
        return replace(base, widths=widths, depths=depths)
    table = {
        "base": (base.dim, base.depth),
        "narrow": (base.dim // 2, base.depth),
        "wide": (base.dim * 2, base.depth),
        "shallow": (base.dim, base.depth // 2),
        "deep": (base.dim, base.depth * 2),
    }
    dim, depth = table[size]
    heads = base.heads if dim >= base.heads * 8 else max(1, dim // 8)
    return replace(base, dim=dim, depth=depth, heads=heads)


def build(family: str, size: str = "base", seed: int = 0) -> nn.Module:
    """A freshly initialized model of `family` at `size`, in eval mode."""
    cls, _ = FAMILIES[family]
    torch.manual_seed(seed)
    model = cls(config_for(family, size))
    if family == "resnet":  # non-trivial BatchNorm statistics, as after training
        g = torch.Generator().manual_seed(seed + 1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def perturb(model: nn.Module, seed: int = 0, scale: float = 0.05) -> nn.Module:
    """Add noise to every parameter, so that no two tensors are equal (as after training):
    exporters then have nothing to deduplicate, and norm scales are not all ones."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def example_input(family: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A deterministic example input for a family."""
    g = torch.Generator().manual_seed(seed)
    _, cfg = FAMILIES[family]
    if family == "gpt":
        return torch.randint(0, cfg.vocab, (batch, cfg.context), generator=g)
    return torch.randn(batch, cfg.channels, 8, 8, generator=g)

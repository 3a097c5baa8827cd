"""fastai-style TabularModel: embeddings for categories, BatchNorm for continuous inputs, an MLP.

Depends on torch alone (copied into the archive). The forward pass is split in two so
attributions can be taken over the embedding outputs and the continuous inputs:
`embed(codes) -> [N, E]` and `head(embedded [N, E], cont [N, C]) -> [N]`.

Example: ``TabularModel([(61, 10), (8, 5)], n_cont=2, layers=[200, 100], ps=[0.001, 0.01],
y_range=(0.0, 10.0))(codes, cont)`` -> [N] (log of the target).
"""

from __future__ import annotations

import torch
from torch import nn


def embedding_size(n_categories: int) -> int:
    """fastai's rule of thumb; `n_categories` counts `#na#`."""
    return min(600, round(1.6 * n_categories**0.56))


class TabularModel(nn.Module):
    """Embeddings -> emb_drop, BatchNorm(cont) -> [Linear-BN-ReLU-Dropout] * layers -> Linear
    -> sigmoid scaled to `y_range`. Inputs codes [N, n_cat] int64, cont [N, n_cont]; out [N]."""

    def __init__(
        self,
        emb_szs: list[tuple[int, int]],
        n_cont: int,
        layers: list[int],
        ps: list[float],
        emb_drop: float = 0.0,
        y_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if len(ps) != len(layers):
            raise ValueError(f"ps has {len(ps)} entries but there are {len(layers)} layers")
        self.embeds = nn.ModuleList([nn.Embedding(n, size) for n, size in emb_szs])
        self.emb_dims = [size for _, size in emb_szs]
        self.emb_drop = nn.Dropout(emb_drop)
        self.bn_cont = nn.BatchNorm1d(n_cont) if n_cont else nn.Identity()
        self.n_emb, self.n_cont = sum(self.emb_dims), n_cont
        sizes = [self.n_emb + n_cont, *layers]
        blocks: list[nn.Module] = []
        for n_in, n_out, p in zip(sizes[:-1], sizes[1:], ps, strict=True):
            blocks += [nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out), nn.ReLU()]
            blocks += [nn.Dropout(p)] if p > 0 else []
        blocks.append(nn.Linear(sizes[-1], 1))
        self.layers = nn.Sequential(*blocks)
        self.y_range = tuple(y_range) if y_range is not None else None

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [N, n_cat] -> the embedding outputs side by side [N, n_emb]."""
        if not self.embeds:
            return codes.new_zeros((codes.shape[0], 0), dtype=torch.float32)
        return torch.cat([embed(codes[:, i]) for i, embed in enumerate(self.embeds)], dim=1)

    def head(self, embedded: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        """embedded [N, n_emb], cont [N, n_cont] -> [N]."""
        x = torch.cat([self.emb_drop(embedded), self.bn_cont(cont)], dim=1)
        out = self.layers(x).squeeze(1)
        if self.y_range is None:
            return out
        low, high = self.y_range
        return torch.sigmoid(out) * (high - low) + low

    def forward(self, codes: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(codes), cont)

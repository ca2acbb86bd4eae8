"""BEV pooling ("splat"): sum lifted frustum features into the BEV grid.

Every frustum point ``(b, n, d, h, w)`` carries the feature ``p[b, n, d, h, w] * F[b, n, :, h, w]``
(depth probability times image feature, the lift of lift-splat-shoot) and lands in the BEV cell
of its LiDAR-frame position ``geometry[b, n, d, h, w]``; points outside the grid are dropped.

Grid semantics (BEVFusion bounds): ``xbound = [min, max, step]`` gives ``round((max - min) / step)``
cells, cell ``i`` covering ``[min + i * step, min + (i + 1) * step)``; the cell of a coordinate is
``floor((coord - min) / step)``. The output is ``(B, Z * C, X, Y)``: dim 2 indexes x, dim 3 indexes
y, and with several z cells the channels are z-major (``channel = z * C + c``, BEVFusion's
``cat(unbind(dim=z))``); with one z cell it is ``(B, C, X, Y)``.

Two implementations of the same sum:

- ``bev_pool_reference``: materialise the outer product ``(B, N, D, H, W, C)`` and ``index_add_``.
- ``BEVPoolGeometry`` (the default): the sum is a sparse linear map ``S`` from the flattened image
  features ``(B*N*H*W, C)`` to the BEV cells ``(B*Z*X*Y, C)``. Its pattern depends on the geometry
  only (calibration and augmentation), so it is built once and cached while they stay fixed; its
  values are the depth probabilities summed over the depth bins of one ray that fall in the same
  cell. Forward is one CSR matrix product ``S @ F``; backward is ``S^T @ dBEV`` for the features
  and a sampled dense-dense product ``<dBEV[cell], F[pixel]>`` on the pattern of ``S`` for the
  probabilities. Nothing of size ``D * C`` per pixel is ever allocated.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch

__all__ = ["bev_grid", "bev_cell_index", "bev_pool", "bev_pool_reference", "BEVPoolGeometry", "csr_tensor"]



def bev_grid(xbound: Sequence[float], ybound: Sequence[float], zbound: Sequence[float]):
    """Bounds ``[min, max, step]`` per axis -> (lower (3,), step (3,), sizes (nx, ny, nz))."""
    bounds = (xbound, ybound, zbound)
    lower = [float(b[0]) for b in bounds]
    step = [float(b[2]) for b in bounds]
    sizes = tuple(int(round((float(b[1]) - float(b[0])) / float(b[2]))) for b in bounds)
    return lower, step, sizes


def bev_cell_index(geometry: torch.Tensor, xbound, ybound, zbound):
    """(..., 3) LiDAR-frame xyz -> (...) int64 flat cell ``(z * X + x) * Y + y``, -1 outside the grid."""
    lower, step, (nx, ny, nz) = bev_grid(xbound, ybound, zbound)
    ijk = torch.floor((geometry - geometry.new_tensor(lower)) / geometry.new_tensor(step))  # (..., 3) x, y, z
    inside = ((ijk >= 0) & (ijk < geometry.new_tensor([nx, ny, nz]))).all(dim=-1)
    ijk = ijk.long()
    cell = (ijk[..., 2] * nx + ijk[..., 0]) * ny + ijk[..., 1]
    return cell.masked_fill_(~inside, -1)


def _cells_to_bev(flat: torch.Tensor, batch_size: int, sizes) -> torch.Tensor:
    """(B*Z*X*Y, C) -> (B, Z*C, X, Y), z-major channels."""
    nx, ny, nz = sizes
    channels = flat.shape[-1]
    bev = flat.view(batch_size, nz, nx, ny, channels).permute(0, 1, 4, 2, 3)  # (B, Z, C, X, Y)
    return bev.reshape(batch_size, nz * channels, nx, ny)


def bev_pool_reference(depth_probs, feats, geometry, xbound, ybound, zbound) -> torch.Tensor:
    """Materialising reference: outer product ``(B, N, D, H, W, C)`` then ``index_add_``.

    depth_probs (B, N, D, H, W), feats (B, N, C, H, W), geometry (B, N, D, H, W, 3) -> (B, Z*C, X, Y).
    """
    batch_size, channels = depth_probs.shape[0], feats.shape[2]
    _, _, sizes = bev_grid(xbound, ybound, zbound)
    num_cells = sizes[0] * sizes[1] * sizes[2]
    # (B, N, D, H, W, 1) * (B, N, 1, H, W, C) -> (B, N, D, H, W, C)
    lifted = depth_probs.unsqueeze(-1) * feats.permute(0, 1, 3, 4, 2).unsqueeze(2)
    cell = bev_cell_index(geometry, xbound, ybound, zbound)
    batch_idx = torch.arange(batch_size, device=cell.device).view(-1, *([1] * (cell.dim() - 1)))
    row = (cell + batch_idx * num_cells).reshape(-1)
    kept = (cell >= 0).reshape(-1)
    out = lifted.new_zeros(batch_size * num_cells, channels)
    out.index_add_(0, row[kept], lifted.reshape(-1, channels)[kept])
    return _cells_to_bev(out, batch_size, sizes)


class BEVPoolGeometry:
    """Sparse structure of the splat for one geometry, reusable while the geometry is fixed.

    Build with ``BEVPoolGeometry(geometry (B, N, D, H, W, 3), xbound, ybound, zbound)``; call
    ``pool(depth_probs (B, N, D, H, W), feats (B, N, C, H, W)) -> (B, Z*C, X, Y)`` any number of
    times. The matrix ``S`` has one row per BEV cell ``(b, z, x, y)``, one column per pixel
    ``(b, n, h, w)`` and one entry per (cell, pixel) pair hit by at least one depth bin.
    """

    def __init__(self, geometry: torch.Tensor, xbound, ybound, zbound):
        if geometry.dim() != 6 or geometry.shape[-1] != 3:
            raise ValueError(f"geometry must be (B, N, D, H, W, 3), got {tuple(geometry.shape)}")
        self.bounds = (tuple(xbound), tuple(ybound), tuple(zbound))
        _, _, self.sizes = bev_grid(xbound, ybound, zbound)
        batch_size, num_cams, depth, height, width, _ = geometry.shape
        self.shape = (batch_size, num_cams, depth, height, width)
        num_cells = self.sizes[0] * self.sizes[1] * self.sizes[2]
        hw = height * width
        self.num_rows = batch_size * num_cells
        self.num_cols = batch_size * num_cams * hw

        cell = bev_cell_index(geometry, xbound, ybound, zbound)
        # (B, N, D, H, W) -> (B*N, H*W, D): consecutive depth bins of one ray are adjacent
        cell = cell.view(batch_size * num_cams, depth, hw).transpose(1, 2).contiguous()
        kept = cell >= 0
        # a run of depth bins of one ray in one cell collapses to one (cell, pixel) pair
        run_start = kept.clone()
        run_start[..., 1:] &= cell[..., 1:] != cell[..., :-1]
        if batch_size > 1:  # row of S: b * Z*X*Y + cell (dropped points are never read)
            offset = torch.arange(batch_size, device=cell.device) * num_cells
            cell.view(batch_size, -1).add_(offset[:, None])
        pair_row = cell.view(-1)[run_start.view(-1).nonzero().squeeze(1)]
        pairs_per_pixel = run_start.view(self.num_cols, depth).sum(dim=1)
        pair_col = torch.repeat_interleave(torch.arange(self.num_cols, device=cell.device), pairs_per_pixel)
        flat = kept.view(-1).nonzero().squeeze(1)  # kept points in (bn, hw, d) order
        self.pair_of_point = (torch.cumsum(run_start.view(-1), 0) - 1)[flat]
        # index of each kept point in the (B, N, D, H, W) flattening of depth_probs
        original = torch.arange(cell.numel(), device=cell.device).view(batch_size * num_cams, depth, hw)
        self.point_index = original.transpose(1, 2).reshape(-1)[flat]
        # A ray crosses a convex cell once, so pairs are distinct up to float round-off near cell
        # borders; a repeated (cell, pixel) pair is kept as a separate entry: the sparse products
        # treat entries independently, so sums and gradients stay exact.
        self.num_pairs = int(pair_col.numel())
        # S^T in CSR: pairs are already grouped by pixel; S in CSR: a stable sort groups them by cell
        self.crow_t = torch.cat([pairs_per_pixel.new_zeros(1), torch.cumsum(pairs_per_pixel, 0)])
        self.col_t = pair_row
        key = pair_row.int() if self.num_rows < 2**31 else pair_row  # int32 keys sort about twice as fast
        self.perm = torch.sort(key, stable=True).indices
        self.crow_s = _compressed(pair_row, self.num_rows)
        self.col_s = pair_col[self.perm]

    def matches(self, geometry_shape, xbound, ybound, zbound) -> bool:
        return tuple(geometry_shape[:5]) == self.shape and self.bounds == (tuple(xbound), tuple(ybound), tuple(zbound))

    def pair_weights(self, depth_probs: torch.Tensor) -> torch.Tensor:
        """(B, N, D, H, W) -> (num_pairs,): probabilities summed per (cell, pixel) pair, pixel-major."""
        values = depth_probs.reshape(-1)[self.point_index]
        return values.new_zeros(self.num_pairs).index_add(0, self.pair_of_point, values)

    def pool(self, depth_probs: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """depth_probs (B, N, D, H, W), feats (B, N, C, H, W) -> (B, Z*C, X, Y)."""
        if tuple(depth_probs.shape) != self.shape:
            raise ValueError(f"depth_probs {tuple(depth_probs.shape)} does not match the geometry {self.shape}")
        batch_size, num_cams, channels, height, width = feats.shape
        # (B, N, C, H, W) -> (B*N*H*W, C)
        flat_feats = feats.permute(0, 1, 3, 4, 2).reshape(batch_size * num_cams * height * width, channels)
        weights = self.pair_weights(depth_probs).to(flat_feats.dtype)
        out = _SparseSplat.apply(weights, flat_feats, self)
        return _cells_to_bev(out, batch_size, self.sizes)


def _compressed(sorted_index: torch.Tensor, size: int) -> torch.Tensor:
    """Row id of each entry (nnz,), entries grouped by row -> CSR row pointers (size + 1,)."""
    counts = torch.bincount(sorted_index, minlength=size)
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    """A CSR matrix from indices built by this code (known valid: the invariant check is skipped)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


class _SparseSplat(torch.autograd.Function):
    """out = S(weights) @ feats with S given by a ``BEVPoolGeometry``; weights in pixel-major order."""

    @staticmethod
    def forward(ctx, weights, flat_feats, structure: BEVPoolGeometry):
        s = csr_tensor(structure.crow_s, structure.col_s, weights[structure.perm], (structure.num_rows, structure.num_cols))
        ctx.structure = structure
        ctx.save_for_backward(weights, flat_feats)
        return s @ flat_feats

    @staticmethod
    def backward(ctx, grad_out):
        weights, flat_feats = ctx.saved_tensors
        st = ctx.structure
        grad_out = grad_out.contiguous()
        s_t = csr_tensor(st.crow_t, st.col_t, weights, (st.num_cols, st.num_rows))
        grad_weights = grad_feats = None
        if ctx.needs_input_grad[0]:
            # <dBEV[cell], F[pixel]> on the pattern of S^T (pixel-major, the order of weights)
            grad_weights = torch.sparse.sampled_addmm(s_t, flat_feats, grad_out.t(), beta=0.0).values()
        if ctx.needs_input_grad[1]:
            grad_feats = s_t @ grad_out
        return grad_weights, grad_feats, None


def bev_pool(
    depth_probs: torch.Tensor,
    feats: torch.Tensor,
    geometry: torch.Tensor,
    xbound,
    ybound,
    zbound,
    cache: BEVPoolGeometry | None = None,
    reference: bool = False,
) -> torch.Tensor:
    """Splat ``depth_probs (B, N, D, H, W) x feats (B, N, C, H, W)`` at ``geometry (B, N, D, H, W, 3)``.

    Returns ``(B, Z*C, X, Y)`` (x along dim 2, y along dim 3). ``cache``: a ``BEVPoolGeometry``
    built from this very geometry (the caller guarantees it; only shapes and bounds are checked);
    ``reference=True`` selects the materialising implementation.
    """
    if reference:
        return bev_pool_reference(depth_probs, feats, geometry, xbound, ybound, zbound)
    if cache is None:
        cache = BEVPoolGeometry(geometry, xbound, ybound, zbound)
    elif not cache.matches(geometry.shape, xbound, ybound, zbound):
        raise ValueError("cache was built for another geometry shape or grid")
    return cache.pool(depth_probs, feats)

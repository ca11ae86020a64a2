"""Anatomy from the image: body, airways, connected components, holes, boundaries.

One algorithm for each idea, shared by everything that needs it. A mask is any array, nonzero
the foreground; ``axis`` is the head-foot axis (default 2, the head at high indices)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .errors import LungsegInputError


def check_spacing(spacing_mm, ndim: int) -> tuple:
    """``spacing_mm`` as ``ndim`` positive floats (one number is repeated); else an error."""
    spacing = tuple(float(s) for s in np.ravel(spacing_mm))
    spacing = spacing * ndim if len(spacing) == 1 else spacing
    if len(spacing) != ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise LungsegInputError(f"spacing_mm {spacing_mm} must be {ndim} positive numbers.")
    return spacing


def bounding_box(mask, margin: int = 0) -> tuple:
    """Slices of the smallest box around ``mask``'s nonzero voxels, ``margin`` wider where the
    array allows (empty mask: empty box); components, and holes with a margin, are alike in it."""
    axes = range(mask.ndim)
    found = [np.flatnonzero(mask.any(axis=tuple(b for b in axes if b != a))) for a in axes]
    return tuple(slice(max(f[0] - margin, 0), f[-1] + 1 + margin) if f.size else slice(0, 0)
                 for f in found)


def largest_components(mask, max_components: int = 1, min_fraction: float = 0.0,
                       min_voxels: int = 0, connectivity: int = 3) -> np.ndarray:
    """The largest component of ``mask`` and up to ``max_components - 1`` more with
    ``min_fraction`` of its voxels, all of at least ``min_voxels``; ``connectivity`` 1 (faces)
    to ``mask.ndim`` (corners). Returns bool, same shape (all False if nothing qualifies)."""
    mask = np.asarray(mask) != 0
    out, box = np.zeros(mask.shape, bool), bounding_box(mask)
    labels, n = ndi.label(mask[box], ndi.generate_binary_structure(mask.ndim, connectivity))
    if n == 0:
        return out
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:max(int(max_components), 1)]
    kept = order[sizes[order] >= max(min_fraction * sizes[order[0]], min_voxels, 1)]
    out[box] = np.isin(labels, kept + 1)
    return out


def holes(mask, in_slices: bool = False) -> np.ndarray:
    """What ``scipy.ndimage.binary_fill_holes`` fills in a 3D ``mask`` (``in_slices``: in each
    slice across the last axis), found in one labelling of the background. Returns bool."""
    cross = ndi.generate_binary_structure(3, 1)
    if in_slices:
        cross[:, :, [0, 2]] = False
    mask = np.asarray(mask, bool)
    out, box = np.zeros(mask.shape, bool), bounding_box(mask, margin=1)
    if not mask.any():
        return out
    labels, n = ndi.label(~mask[box], cross)
    border = np.zeros(n + 1, bool)
    faces = [labels[[0, -1]], labels[:, [0, -1]]] + ([] if in_slices else [labels[..., [0, -1]]])
    for face in faces:
        border[face] = True
    border[0] = True                              # label 0: the mask itself
    out[box] = ~border[labels]
    return out


def fill_holes(mask, axis: int = 2) -> np.ndarray:
    """Fill enclosed holes in 3D, then in every slice across ``axis``. Returns bool."""
    out = np.asarray(mask) != 0
    out = np.moveaxis(out | holes(out), axis, -1)
    return np.moveaxis(out | holes(out, in_slices=True), -1, axis)


def postprocess_lungs(mask, max_components: int = 2, min_fraction: float = 0.1,
                      axis: int = 2) -> np.ndarray:
    """Clean a lung mask (X, Y, Z): :func:`largest_components` (the two lungs may touch and
    form one), then :func:`fill_holes`. Returns uint8 {0, 1}, same shape."""
    return fill_holes(largest_components(mask, max_components, min_fraction), axis).astype(np.uint8)


def boundary(mask, mode: str = "inner") -> np.ndarray:
    """Boundary voxels of a mask (any number of axes; bool): ``"inner"`` the mask's voxels with
    a face neighbour outside it (or the array's edge, MONAI's convention), ``"outer"`` the
    background voxels with one inside, ``"thick"`` both."""
    m = np.asarray(mask) != 0
    cross = ndi.generate_binary_structure(m.ndim, 1)
    inner = m & ~ndi.binary_erosion(m, cross, border_value=0)
    if mode == "inner":
        return inner
    outer = ndi.binary_dilation(m, cross) & ~m
    if mode == "outer":
        return outer
    if mode == "thick":
        return inner | outer
    raise LungsegInputError(f"boundary: mode={mode!r} must be inner, outer or thick.")


def boundary_band(mask, spacing_mm, width_mm: float) -> np.ndarray:
    """Voxels within ``width_mm`` of the mask's boundary, inside or outside (bool, mask's shape)."""
    m = np.asarray(mask) != 0
    sp = check_spacing(spacing_mm, m.ndim)
    if not m.any() or m.all():
        return np.zeros(m.shape, bool)
    inside = ndi.distance_transform_edt(m, sampling=sp)
    outside = ndi.distance_transform_edt(~m, sampling=sp)
    return np.where(m, inside, outside) <= width_mm


def body_mask(ct_hu, threshold_hu: float = -400.0, axis: int = 2) -> np.ndarray:
    """The area the patient's body encloses on each axial slice (bool, same shape): the largest
    component of ``ct_hu >= threshold_hu``, its holes filled per slice, the image edge closed
    between its outermost contacts (a field of view that cuts the body keeps the lungs in)."""
    air = np.moveaxis(np.asarray(ct_hu) < threshold_hu, axis, -1)
    body = largest_components(~air, 1, connectivity=1)
    closed = np.pad(body, ((1, 1), (1, 1), (0, 0)))
    for ax in (0, 1):
        for side in (0, -1):
            hits = np.take(body, side, axis=ax)          # contacts with this edge: (along it, Z)
            span = np.logical_or.accumulate(hits) & np.logical_or.accumulate(hits[::-1])[::-1]
            edge = [slice(1, -1), slice(1, -1), slice(None)]
            edge[ax] = side
            closed[tuple(edge)] |= span      # the padding, from the first contact to the last
    inside = (closed | holes(closed, in_slices=True))[1:-1, 1:-1]
    return np.moveaxis(inside, -1, axis)


def airway(cand, spacing_mm, max_area_mm2: float = 1000.0, seed_depth_mm: float = 15.0,
           axis: int = 2) -> np.ndarray:
    """Trachea and main bronchi in a mask of air inside the body, traced down from the pieces
    of at most ``max_area_mm2`` within ``seed_depth_mm`` of its top: a piece under the airway
    is airway if small or not growing; a lung ends the trace. Returns bool, ``cand``'s shape."""
    spacing = check_spacing(spacing_mm, 3)
    px_mm2 = np.prod([s for i, s in enumerate(spacing) if i != axis])      # in-slice pixel area
    main = largest_components(np.moveaxis(np.asarray(cand) != 0, axis, -1))
    out = np.zeros(main.shape, bool)
    zs = np.flatnonzero(main.any(axis=(0, 1)))
    prev, prev_area = None, 0.0
    for z in range(zs[-1], zs[0] - 1, -1) if zs.size else []:
        labels, k = ndi.label(main[:, :, z])
        areas = np.bincount(labels.ravel(), minlength=k + 1)[1:] * px_mm2
        if prev is None:                                   # still looking for seeds
            if (zs[-1] - z) * spacing[axis] > seed_depth_mm:
                break
            take = areas <= max_area_mm2
        else:
            take = np.zeros(k, bool)
            take[np.unique(labels[prev & (labels > 0)]) - 1] = True
            take &= (areas <= max_area_mm2) | (areas <= prev_area)
        cur = np.isin(labels, 1 + np.flatnonzero(take))
        if cur.any():
            out[:, :, z] = cur
            prev, prev_area = ndi.binary_dilation(cur), cur.sum() * px_mm2
        elif prev is not None:                             # the airway has ended
            break
    return np.moveaxis(out, -1, axis)


def classical_lung_mask(ct_hu, spacing_mm, threshold_hu: float = -400.0,
                        rim_hu: float | None = -300.0, axis: int = 2, body=None) -> np.ndarray:
    """Non-learning lung segmentation: threshold, body, airways, components, holes.

    Air below ``threshold_hu`` inside :func:`body_mask` (or ``body``, bool, where made), less
    the :func:`airway`, through :func:`postprocess_lungs`; with ``rim_hu``, plus the one-voxel
    rim below ``rim_hu`` (partial-volume lung), holes filled again. ``ct_hu`` (X, Y, Z), HU;
    ``spacing_mm`` 3 floats. Returns uint8 {0, 1}, same shape as ``ct_hu``.
    """
    ct = np.asarray(ct_hu, dtype=np.float32)
    if ct.ndim != 3:
        raise LungsegInputError(f"ct_hu must be 3D, got shape {ct.shape}.")
    inside = body_mask(ct, threshold_hu, axis) if body is None else np.asarray(body, bool)
    cand = (ct < threshold_hu) & inside
    airways = airway(cand, spacing_mm, axis=axis)
    lungs = postprocess_lungs(cand & ~airways, axis=axis) > 0
    if rim_hu is not None:                  # in the lungs' box: all a one-voxel rim can reach
        box, rim = bounding_box(lungs, margin=2), np.zeros_like(lungs)
        rim[box] = (ndi.binary_dilation(lungs[box]) & (ct[box] < rim_hu) & inside[box]
                    & ~ndi.binary_dilation(airways[box]))
        lungs = fill_holes(lungs | rim, axis)
    return lungs.astype(np.uint8)

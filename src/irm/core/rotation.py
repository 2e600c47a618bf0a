"""Fixed random orthogonal bases for the IRM's output and input (the basis tests).

An IRM with ``output_rotation = SEED`` writes its output in its own basis and the host
receives ``R_l @ out_l`` at injected layer ``l``: one matrix per injected layer, drawn from
the Haar measure, indexed by the host layer (so layer 5's matrix is the same whichever
other layers are injected). Per-layer matrices rather than one shared matrix: a pattern
that repeats in every layer of the IRM's own basis (a stripe) then lands on a different,
dense pattern in every layer of the host's basis, so stripes made by the optimizer in the
IRM's basis and stripes made by the host in its basis predict opposite pictures. A shared
``R`` would carry a stripe into a stripe (``|R e_i|`` in every layer) and could only
separate the two causes by which indices dominate.

``input_rotation = SEED`` makes the IRM read ``Q @ h`` instead of ``h`` (one matrix).

The matrices are never trained nor saved: they are regenerated from the seed (numpy's
PCG64 seeded with ``[seed, stream, layer]``, a QR decomposition with the signs fixed), and
a SHA-256 of their float32 bytes, stored in ``irm_config.json``, is checked on load.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

OUTPUT_STREAM = 0
INPUT_STREAM = 1


def orthogonal_matrix(seed: int, size: int, stream: int, index: int = 0) -> np.ndarray:
    """A Haar-random ``(size, size)`` orthogonal matrix (float64), the same for the same
    ``(seed, stream, index)`` on every machine."""
    rng = np.random.default_rng([seed, stream, index])
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    return q * np.sign(np.diag(r))[None, :]


def output_rotations(seed: int, layers: Sequence[int], size: int) -> torch.Tensor:
    """``(len(layers), size, size)`` float32: ``R_l`` for each injected host layer."""
    return torch.from_numpy(np.stack([orthogonal_matrix(seed, size, OUTPUT_STREAM, layer) for layer in layers]).astype(np.float32))


def input_rotation(seed: int, size: int) -> torch.Tensor:
    """``(size, size)`` float32: the matrix ``Q`` applied to the IRM's input."""
    return torch.from_numpy(orthogonal_matrix(seed, size, INPUT_STREAM).astype(np.float32))


def rotation_digest(*matrices: torch.Tensor | None) -> str:
    """SHA-256 (first 16 hex digits) of the float32 bytes of the given matrices."""
    digest = hashlib.sha256()
    for m in matrices:
        digest.update(b"-" if m is None else m.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]

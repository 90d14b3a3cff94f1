"""The staggered invariant/covariant network of Mailoa et al. (2019) in PyTorch.

Per centre element ``e`` an MLP ``NN_e`` maps the standardised invariant
features ``G_i`` of an atom to ``K = spec.n_covariant`` invariant numbers; a
head combines them with the atom's covariant vectors ``V_i`` (K, 3) into a
force. Every learned quantity is a function of invariants only, so the force
is exactly rotation-covariant and translation/permutation invariant.

Heads
-----
``projection`` (the paper's DCF, default)
    ``p_i = NN_e(G_i)`` predicts the projections ``p_ik ≈ F_i · V_ik``; the
    force is the regularised least-squares solution
    ``F_i = (Σ_k V_ik V_ikᵀ + ε_i I)⁻¹ Σ_k p_ik V_ik``. The 3×3 solve uses the
    explicit adjugate / determinant formula (:func:`solve3_adjugate`), the same
    arithmetic as the exported ONNX graph. ``ε_i = eps_rel · tr(A_i)/3 + eps_abs``
    with ``A_i = Σ_k V_ik V_ikᵀ``: the regulariser is relative to the mean
    eigenvalue of ``A_i``, so it does not depend on the scale (units) of the
    covariant features; ``eps_abs`` only keeps isolated atoms (``V_i = 0``,
    which gives ``F_i = 0``) finite. Because ``p`` is a free output of the
    network, any force in the span of the ``V_ik`` stays reachable for every
    ``ε``; the regulariser only bounds the conditioning of the solve.
``basis``
    ``F_i = Σ_k c_ik V_ik`` with ``c_i = NN_e(G_i)``.

Network input
-------------
With ``gram=True`` (default) the input of ``NN_e`` is ``G_i`` followed by the
upper triangle of the Gram matrix of the atom's covariant vectors,
``V_ik · V_il`` (k <= l, K(K+1)/2 numbers). These inner products are exact
rotation invariants, so the symmetry argument is unchanged; they are what the
projection targets ``p_ik = F_i · V_ik`` depend on (``F_i`` is, to a good
approximation, a combination of the ``V_il``), and the symmetry functions
G2/G4 alone encode them only loosely. On Li4P2O7 frames split at random they
cut the projection head's test force error by a factor of about 2 at equal
training time; on the trajectory split of the bundled data the gain is small
(see the README). ``gram=False`` is the paper's plain input.

Each element's MLP runs only on that element's atoms (indexed by species,
scattered back); no atom is pushed through another element's network.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# the heads, activations, default regularisation of the projection head (EPS_REL, EPS_ABS, see the module
# docstring) and soft input clip (INPUT_CLIP, z -> c·tanh(z/c), see StaggeredNetwork) live in a torch-free
# module, so that reading a config does not need torch
from ._defaults import ACTIVATIONS, EPS_ABS, EPS_REL, HEADS, INPUT_CLIP

__all__ = ["StaggeredNetwork", "solve3_adjugate", "projection_force", "basis_force", "HEADS", "ACTIVATIONS"]

#: Relative floor of RMS|V_k| in the basis head's output scale (see ``set_statistics``).
BASIS_V_FLOOR = 0.1


def _activation(name: str) -> nn.Module:
    if name == "silu":
        return nn.SiLU()
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"`activation` must be one of {list(ACTIVATIONS)}, got {name!r}")


def solve3_adjugate(a_n33: torch.Tensor, b_nc: torch.Tensor) -> torch.Tensor:
    """Solve ``A x = b`` for a batch of 3×3 systems with the adjugate formula.

    ``x = adj(A) b / det(A)``, written out entry by entry with the same
    cofactor products and sums as the ONNX export (no pivoting, no library
    solver), so PyTorch and onnxruntime perform the same arithmetic.

    Parameters
    ----------
    a_n33 : torch.Tensor, shape (N, 3, 3)
        Non-singular matrices.
    b_nc : torch.Tensor, shape (N, 3)
        Right-hand sides.

    Returns
    -------
    torch.Tensor, shape (N, 3)
    """
    a = a_n33.reshape(-1, 9)
    a00, a01, a02, a10, a11, a12, a20, a21, a22 = (a[:, k] for k in range(9))
    # cofactors C_ij; adj(A)_ij = C_ji
    c00 = a11 * a22 - a12 * a21
    c01 = a12 * a20 - a10 * a22
    c02 = a10 * a21 - a11 * a20
    c10 = a02 * a21 - a01 * a22
    c11 = a00 * a22 - a02 * a20
    c12 = a01 * a20 - a00 * a21
    c20 = a01 * a12 - a02 * a11
    c21 = a02 * a10 - a00 * a12
    c22 = a00 * a11 - a01 * a10
    det = a00 * c00 + a01 * c01 + a02 * c02
    b0, b1, b2 = b_nc[:, 0], b_nc[:, 1], b_nc[:, 2]
    x0 = (c00 * b0 + c10 * b1 + c20 * b2) / det
    x1 = (c01 * b0 + c11 * b1 + c21 * b2) / det
    x2 = (c02 * b0 + c12 * b1 + c22 * b2) / det
    return torch.stack((x0, x1, x2), dim=1)


def projection_force(p_nk: torch.Tensor, v_nkc: torch.Tensor, eps_rel: float = EPS_REL, eps_abs: float = EPS_ABS):
    """Projection (DCF) head: ``F = (V Vᵀ + εI)⁻¹ V p`` per atom.

    Parameters
    ----------
    p_nk : torch.Tensor, shape (N, K)
        Predicted projections ``F · V_k`` (force units).
    v_nkc : torch.Tensor, shape (N, K, 3)
        Covariant features.
    eps_rel, eps_abs : float
        ``ε = eps_rel · tr(V Vᵀ)/3 + eps_abs``.

    Returns
    -------
    torch.Tensor, shape (N, 3)
    """
    a_n33 = torch.matmul(v_nkc.transpose(1, 2), v_nkc)
    b_nc = torch.matmul(p_nk.unsqueeze(1), v_nkc).squeeze(1)
    a = a_n33.reshape(-1, 9)
    trace = a[:, 0] + a[:, 4] + a[:, 8]
    eps = trace * (eps_rel / 3.0) + eps_abs
    eye = torch.eye(3, dtype=v_nkc.dtype, device=v_nkc.device)
    a_n33 = a_n33 + eps[:, None, None] * eye
    return solve3_adjugate(a_n33, b_nc)


def basis_force(c_nk: torch.Tensor, v_nkc: torch.Tensor) -> torch.Tensor:
    """Basis head: ``F = Σ_k c_k V_k`` per atom; shapes (N, K), (N, K, 3) -> (N, 3)."""
    return torch.matmul(c_nk.unsqueeze(1), v_nkc).squeeze(1)


class StaggeredNetwork(nn.Module):
    """Per-element MLPs on standardised invariants + a covariant head.

    Parameters
    ----------
    spec : fastfeat.FeatureSpec
        Feature definition; fixes ``n_invariant``, ``K = n_covariant`` and the
        species order (the ``species`` input indexes ``spec.species``).
    hidden : sequence of int
        Hidden layer widths of every element's MLP.
    head : {"projection", "basis"}
    activation : {"silu", "tanh"}
    eps_rel, eps_abs : float
        Regularisation of the projection head.
    gram : bool
        Append the Gram entries ``V_k · V_l`` (k <= l) to the invariants
        (see the module docstring).
    input_clip : float
        Standardised inputs ``z`` pass through ``c·tanh(z/c)`` with
        ``c = input_clip`` (0 = off): identity for typical values, bounded for
        environments never seen in training. Amorphous structures of a new
        trajectory contain atoms whose features lie tens to thousands of
        training standard deviations away; unclipped, they drive the MLP far
        outside its fitted range.

    Notes
    -----
    Buffers (saved with the state dict): ``feature_mean`` / ``feature_std``
    (S, n_inputs), the per-element standardisation of the network inputs, and
    ``output_scale`` (S, K), a per-element per-output scale applied after the
    last layer so that a unit-scale network output matches the typical size
    of the target quantity. Set them with :meth:`set_statistics`.
    """

    def __init__(self, spec, hidden=(64, 64), head="projection", activation="silu",
                 eps_rel=EPS_REL, eps_abs=EPS_ABS, gram=True, input_clip=INPUT_CLIP):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"`head` must be one of {list(HEADS)}, got {head!r}")
        hidden = tuple(int(h) for h in hidden)
        if not hidden or min(hidden) < 1:
            raise ValueError(f"`hidden` must be a non-empty sequence of positive widths, got {hidden}")
        if not (eps_rel >= 0 and eps_abs > 0):
            raise ValueError(f"`eps_rel` must be >= 0 and `eps_abs` > 0, got {eps_rel}, {eps_abs}")
        _activation(activation)
        self.spec = spec
        self.hidden = hidden
        self.head = head
        self.activation = activation
        self.eps_rel = float(eps_rel)
        self.eps_abs = float(eps_abs)
        self.gram = bool(gram)
        if not input_clip >= 0:
            raise ValueError(f"`input_clip` must be >= 0 (0 = off), got {input_clip}")
        self.input_clip = float(input_clip)
        n_s, n_k = spec.n_species, spec.n_covariant
        iu, ju = np.triu_indices(n_k)
        self.register_buffer("gram_index", torch.as_tensor(iu * n_k + ju, dtype=torch.int64), persistent=False)
        n_f = self.n_inputs
        self.nets = nn.ModuleList()
        for _ in range(n_s):
            layers, width = [], n_f
            for h in hidden:
                layers += [nn.Linear(width, h), _activation(activation)]
                width = h
            layers.append(nn.Linear(width, n_k))
            self.nets.append(nn.Sequential(*layers))
        self.register_buffer("feature_mean", torch.zeros(n_s, n_f))
        self.register_buffer("feature_std", torch.ones(n_s, n_f))
        self.register_buffer("output_scale", torch.ones(n_s, n_k))

    @property
    def n_inputs(self) -> int:
        """Width of each element network's input: n_invariant (+ K(K+1)/2 Gram entries)."""
        k = self.spec.n_covariant
        return self.spec.n_invariant + (k * (k + 1) // 2 if self.gram else 0)

    def network_inputs(self, g_nf: torch.Tensor, v_nkc: torch.Tensor) -> torch.Tensor:
        """(N, n_inputs): the invariants, then (if ``gram``) the Gram entries V_k·V_l, k <= l."""
        if not self.gram:
            return g_nf
        n, k = v_nkc.shape[0], v_nkc.shape[1]
        gram = torch.matmul(v_nkc, v_nkc.transpose(1, 2)).reshape(n, k * k).index_select(1, self.gram_index)
        return torch.cat((g_nf, gram), dim=1)

    # ------------------------------------------------------------ statistics
    @torch.no_grad()
    def set_statistics(self, g_nf, v_nkc, species_n, target_nc, min_std=1e-3):
        """Set standardisation and output scale from training data.

        Parameters
        ----------
        g_nf : array, shape (N, n_invariant)
        v_nkc : array, shape (N, K, 3)
            (the Gram entries are derived from it when ``gram``)
        species_n : array, shape (N,), int
        target_nc : array, shape (N, 3)
            Reference forces (or the learned covariant target).
        min_std : float
            Floor of every standard deviation, relative to the largest
            standard deviation of the same element (constant columns, e.g.
            G4 blocks of pairs an element never sees, are not blown up).

        Notes
        -----
        The projection head's output scale of element ``e``, output ``k`` is
        the RMS of ``F_i · V_ik`` over that element's atoms; the basis head's
        is ``RMS|F| / (sqrt(K) · max(RMS|V_k|, BASIS_V_FLOOR · max_l RMS|V_l|))``
        (the floor keeps columns that the data hardly populates from getting a
        scale that would blow up on an unseen neighbour distance). Elements absent from the data
        keep mean 0, std 1, scale 1.
        """
        v = np.asarray(v_nkc, dtype=np.float64)
        with torch.no_grad():
            g = self.network_inputs(torch.as_tensor(np.asarray(g_nf), dtype=torch.float64),
                                    torch.as_tensor(v)).numpy()
        sp = np.asarray(species_n)
        t = np.asarray(target_nc, dtype=np.float64)
        n_s, n_k = self.spec.n_species, self.spec.n_covariant
        mean = np.zeros((n_s, g.shape[1]))
        std = np.ones((n_s, g.shape[1]))
        scale = np.ones((n_s, n_k))
        for e in range(n_s):
            m = sp == e
            if not m.any():
                continue
            ge = g[m]
            mean[e] = ge.mean(axis=0)
            s = ge.std(axis=0)
            floor = max(float(s.max()), 1e-12) * min_std
            std[e] = np.maximum(s, floor)
            ve, te = v[m], t[m]
            if self.head == "projection":
                proj = np.einsum("nkc,nc->nk", ve, te)
                sc = np.sqrt((proj**2).mean(axis=0))
            else:
                f_rms = np.sqrt((te**2).sum(axis=1).mean())
                v_rms = np.sqrt((ve**2).sum(axis=2).mean(axis=0))
                # covariant columns (almost) empty in the data (a distance shell no pair of this
                # element reaches) must not get a huge scale: one such neighbour at inference
                # would otherwise multiply an untrained coefficient by it
                v_floor = max(float(v_rms.max()), 1e-12) * BASIS_V_FLOOR
                sc = f_rms / (np.sqrt(n_k) * np.maximum(v_rms, v_floor))
            top = max(float(sc.max()), 1e-12)
            scale[e] = np.maximum(sc, 1e-3 * top)
        dt = self.feature_mean.dtype
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=dt))
        self.feature_std.copy_(torch.as_tensor(std, dtype=dt))
        self.output_scale.copy_(torch.as_tensor(scale, dtype=dt))

    # --------------------------------------------------------------- forward
    def atom_outputs(self, g_nf: torch.Tensor, v_nkc: torch.Tensor, species_n: torch.Tensor) -> torch.Tensor:
        """Per-atom invariant outputs (N, K): projections or basis coefficients."""
        g_nf = self.network_inputs(g_nf, v_nkc)
        out = g_nf.new_zeros((g_nf.shape[0], self.spec.n_covariant))
        inv_std = 1.0 / self.feature_std
        for e, net in enumerate(self.nets):
            idx = torch.nonzero(species_n == e).reshape(-1)
            x = (g_nf.index_select(0, idx) - self.feature_mean[e]) * inv_std[e]
            if self.input_clip:
                x = torch.tanh(x * (1.0 / self.input_clip)) * self.input_clip
            y = net(x) * self.output_scale[e]
            out = out.index_copy(0, idx, y)
        return out

    def forward(self, g_nf: torch.Tensor, v_nkc: torch.Tensor, species_n: torch.Tensor) -> torch.Tensor:
        """Forces (N, 3) from invariants (N, n_inv), covariants (N, K, 3), species (N,) int64."""
        out = self.atom_outputs(g_nf, v_nkc, species_n)
        if self.head == "projection":
            return projection_force(out, v_nkc, self.eps_rel, self.eps_abs)
        return basis_force(out, v_nkc)

    # ---------------------------------------------------------- persistence
    def hyperparameters(self) -> dict:
        """JSON-able constructor arguments (with the spec as JSON text)."""
        return {
            "spec": self.spec.to_json(),
            "hidden": list(self.hidden),
            "head": self.head,
            "activation": self.activation,
            "eps_rel": self.eps_rel,
            "eps_abs": self.eps_abs,
            "gram": self.gram,
            "input_clip": self.input_clip,
        }

    @classmethod
    def from_hyperparameters(cls, hp: dict) -> "StaggeredNetwork":
        from fastfeat import FeatureSpec

        hp = dict(hp)
        spec = FeatureSpec.from_json(hp.pop("spec"))
        return cls(spec, **hp)

    def __repr__(self) -> str:  # short and informative
        return (f"StaggeredNetwork(species={list(self.spec.species)}, n_invariant={self.spec.n_invariant}, "
                f"K={self.spec.n_covariant}, hidden={list(self.hidden)}, head={self.head!r}, "
                f"activation={self.activation!r}, gram={self.gram}, params={sum(p.numel() for p in self.parameters())})")


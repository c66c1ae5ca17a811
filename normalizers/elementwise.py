"""
The elementwise family: normalizers whose weight of key j is a function of its own score and of row statistics,

    p_ij = f_ij / z_i    (or p_ij = f_ij: no denominator)

the form the Triton kernel family in kernels/elementwise.py computes without building T×T (symax, sigmoid,
softpick, clipped). A member says its numerators and denominators in `terms`; the exact reference then divides the
(T, d) output by z instead of the (T, T) weights: the same numbers, with two fewer passes over T×T in the forward
and three in the backward, which is most of what these references cost on CPU at small T.
Its fused path is kernels.elementwise.<name>_attention, on CUDA (on CPU only in Triton's interpreter); without
triton installed the family takes the reference everywhere.
"""

from .spec import Normalizer, reference_weights, weighted_values

try:
    from kernels import elementwise as kernel
except ImportError:  # no triton
    kernel = None


class ElementwiseNormalizer(Normalizer):
    def terms(self, s, mask, **args):
        """(f, z): f the numerators over the real keys (B, H, T, T; exactly 0 where masked), z the row denominators
        (B, H, T, 1), or None when the weights are not normalised."""
        raise NotImplementedError

    def weights(self, s, mask, **args):
        f, z = self.terms(s, mask, **args)
        return f if z is None else f / z

    def reference(self, q, k, v, dropout_p=0.0, **args):
        f, z = reference_weights(q, k, self.terms, **args)
        return weighted_values(f, v, dropout_p, z)

    fused_max_head_dim = kernel.MAX_HEAD_DIM if kernel else None

    @property
    def fused(self):
        return getattr(kernel, f"{self.name}_attention") if kernel else None

    @property
    def missing_fused(self):
        return "" if kernel else " (it needs triton, which is not installed)"

    def fused_unavailable(self, device_type, auto):
        return kernel.unavailable(self.name, device_type, auto)

"""
The attention normalizers (attn_norm), one spec per file, and the one registry the whole repo reads: the model,
the kernel dispatch, the benchmarks, the analysis, the study and the tests all iterate NORMALIZERS.
Adding a normalizer is one file and one line below; docs/adding_a_normalizer.md shows how.

attn_impl (a setting) picks how attention runs:
    reference  the spec's exact formula (fp32, materialises T×T)
    fused      the spec's fused path; an error where it is not available
    auto       the fastest exact path here: fused where available and faster, else the reference
"""


from . import gates
from .clipped import Clipped
from .diff import Diff
from .diff2 import Diff2
from .kvbias import KVBias
from .sigmoid import Sigmoid
from .sink import Sink
from .softmax import Softmax
from .softmax1 import Softmax1
from .softpick import Softpick
from .spec import Normalizer, Setting, causal_scores, reference_attention, reference_weights
from .symax import Symax

# The registry, in report order; the first is the baseline every study compares against.
NORMALIZERS = {spec.name: spec for spec in (
    Softmax(),
    Softmax1(),
    Symax(),
    Diff(),
    Sigmoid(),
    Softpick(),
    Clipped(),
    Sink(),
    KVBias(),
    Diff2(),
)}

ATTN_IMPLS = ("auto", "fused", "reference")


def get(attn_norm):
    if attn_norm not in NORMALIZERS:
        raise ValueError(f"unknown attn_norm {attn_norm!r}; valid: {', '.join(NORMALIZERS)}")
    return NORMALIZERS[attn_norm]


def settings():
    """Every normalizer's own settings and the gate's, {name: Setting}; a name may be declared once only."""
    out = {}
    for declared in [spec.settings for spec in NORMALIZERS.values()] + [gates.SETTINGS]:
        for key, setting in declared.items():
            assert key not in out, f"setting {key} declared twice"
            out[key] = setting
    return out


def with_settings(cls):
    """Class decorator (before @dataclass): adds every normalizer's settings to a config class as fields."""
    for key, setting in settings().items():
        cls.__annotations__[key] = setting.type
        setattr(cls, key, setting.default)
    return cls


def check_config(cfg):
    """Validate attn_norm, attn_impl, every normalizer setting and the active normalizer's architecture rules."""
    spec = get(cfg.attn_norm)
    if cfg.attn_impl not in ATTN_IMPLS:
        raise ValueError(f"unknown attn_impl {cfg.attn_impl!r}; valid: {', '.join(ATTN_IMPLS)}")
    for key, setting in settings().items():
        value = getattr(cfg, key)
        problem = None if value is None or setting.check is None else setting.check(value, cfg)
        if problem:
            raise ValueError(f"{key} {problem}, got {value}")
    spec.check(cfg)


def unavailable_reason(attn_norm, device_type, dropout_p, attn_impl="fused", head_dim=None):
    """Why the fused path cannot (attn_impl='fused') or should not (attn_impl='auto') run here, for heads of
    head_dim (None: not known yet); None if it can."""
    spec = get(attn_norm)
    if spec.fused is None:
        return f"no fused kernel for attn_norm={attn_norm!r}" + spec.missing_fused
    if dropout_p > 0 and not spec.fused_dropout:
        return (f"the {attn_norm} kernel has no attention dropout (attn_dropout={dropout_p}); the reference applies "
                f"it")
    if head_dim is not None and spec.fused_max_head_dim is not None and head_dim > spec.fused_max_head_dim:
        return f"the {attn_norm} kernel supports head_dim <= {spec.fused_max_head_dim}, not {head_dim}"
    return spec.fused_unavailable(device_type, auto=attn_impl == "auto")


def use_fused(attn_norm, attn_impl, device_type, dropout_p, head_dim=None):
    if attn_impl == "reference":
        return False
    reason = unavailable_reason(attn_norm, device_type, dropout_p, attn_impl, head_dim)
    if attn_impl == "fused" and reason:
        raise RuntimeError(f"attn_impl='fused' cannot run {attn_norm} attention on {device_type}: {reason}. "
                           "Use attn_impl='auto' (falls back to the reference) or 'reference'.")
    return reason is None


def describe(attn_norm, attn_impl, device_type, dropout_p, head_dim=None):
    """One line for the logs: which function attention runs on this device, and why."""
    spec = get(attn_norm)
    if use_fused(attn_norm, attn_impl, device_type, dropout_p, head_dim):
        return f"fused ({spec.fused.__module__}.{spec.fused.__name__})"
    why = ("asked for" if attn_impl == "reference" else
           unavailable_reason(attn_norm, device_type, dropout_p, attn_impl, head_dim))
    return f"reference ({type(spec).__module__}.{type(spec).__name__}.reference: {why})"


def attention(attn_norm, q, k, v, dropout_p=0.0, attn_impl="fused", **args):
    """Causal attention of (B, H, T, d) q, k, v with this normalizer, by attn_impl; args: the spec's args()."""
    spec = get(attn_norm)
    if use_fused(attn_norm, attn_impl, q.device.type, dropout_p, q.size(-1)):
        return spec.fused(q, k, v, **args, **({"dropout_p": dropout_p} if dropout_p else {}))
    return spec.reference(q, k, v, dropout_p, **args)


__all__ = ["NORMALIZERS", "ATTN_IMPLS", "Normalizer", "Setting", "attention", "causal_scores", "check_config",
           "describe", "get", "reference_attention", "reference_weights", "settings", "unavailable_reason",
           "use_fused", "with_settings"]

"""How a model's weights were drawn when it was built: the law of each layer's weights, which decides the null
of its bias test (docs/method.md §3.3, `hparr.null`).

`recording()` watches the tensor operations of a model's construction (a `torch.overrides.TorchFunctionMode`)
and follows, for every storage, what filled it: `uniform_`, `normal_` (as torch's and timm's initializers call
them, or as `nn.init.uniform_`, `normal_`, `constant_` and `kaiming_uniform_` are called), the inverse-error-
function trick of truncated normals (`uniform_` then `erfinv_`), scalar `mul_`, `div_`, `add_`, `sub_`, `clamp_`,
and `copy_` from another followed tensor. Anything else that writes into a storage, or writes part of it, makes
its law unknown. `record_laws(model, recorder)` then stores the law of every conv or Linear weight on its module
(`weight_law(module)` reads it): `gaussian`, `uniform`, `truncnorm(c)` (a normal cut at +/- c sd), or None when
unknown (an orthogonal initialization, weights computed by other operations, a law not centered at 0).
`hparr.models.build_model` records every model it builds.
"""
from __future__ import annotations

import contextlib
import math
import statistics
from dataclasses import dataclass, replace
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch.nn.parameter import is_lazy
from torch.overrides import TorchFunctionMode

from . import null

ATTRIBUTE = "hparr_weight_law"  # the module attribute that holds the law of its weight
_CLIP_MASS = 1e-9  # a clamp that cuts less than this mass of a normal only truncates it further


def _ndtri(p: float) -> float:
    """Its inverse (`scipy._ndtri`), -inf at 0 and inf at 1."""
    if p <= 0:
        return -math.inf
    if p >= 1:
        return math.inf
    return statistics.NormalDist().inv_cdf(p)


@dataclass(frozen=True)
class Draw:
    """The law that filled a storage: `uniform` on [loc - scale, loc + scale], or `normal` with mean loc and
    sd scale truncated to [loc + lo scale, loc + hi scale], or a `constant`."""

    kind: str
    loc: float = 0.0
    scale: float = 1.0
    lo: float = -math.inf
    hi: float = math.inf

    def law(self) -> str | None:
        """The entries' law of `hparr.null` (None: not a centered law of that list)."""
        if self.kind == "constant" or self.scale <= 0 or abs(self.loc) > 1e-12 * self.scale:
            return None
        if self.kind == "uniform":
            return null.UNIFORM
        if math.isinf(self.lo) and math.isinf(self.hi):
            return null.GAUSSIAN
        c = min(-self.lo, self.hi)
        # an asymmetric truncation: symmetric to within a mass that does not count
        if abs(null.ndtr(-c) - null.ndtr(-max(-self.lo, self.hi))) > _CLIP_MASS:
            return None
        return null.GAUSSIAN if math.isinf(c) else null.truncnorm_law(c)

    def scaled(self, a: float) -> Draw:
        if a == 0:
            return Draw("constant", 0.0, 0.0)
        lo, hi = (self.lo, self.hi) if a > 0 else (-self.hi, -self.lo)
        return replace(self, loc=self.loc * a, scale=self.scale * abs(a), lo=lo, hi=hi)

    def shifted(self, b: float) -> Draw:
        return replace(self, loc=self.loc + b)

    def clamped(self, low: float | None, high: float | None) -> Draw | None:
        low = -math.inf if low is None else float(low)
        high = math.inf if high is None else float(high)
        if self.kind == "uniform":
            inside = low <= self.loc - self.scale and high >= self.loc + self.scale
            return self if inside else None
        if self.kind != "normal":
            return None
        lo, hi = (low - self.loc) / self.scale, (high - self.loc) / self.scale
        # clamping moves the mass beyond the bounds onto them: only a negligible mass may move
        if null.ndtr(min(lo, self.hi)) - null.ndtr(self.lo) > _CLIP_MASS or \
                null.ndtr(-max(hi, self.lo)) - null.ndtr(-self.hi) > _CLIP_MASS:
            return None
        return replace(self, lo=max(self.lo, lo), hi=min(self.hi, hi))


def _arg(args, kwargs, i: int, name: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _scalar(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_meta:
        return float(value)
    return None


def _key(t: torch.Tensor):
    """The storage of a tensor (None where it has none worth following: meta, sparse, a lazy module's
    uninitialized parameter...)."""
    try:
        if is_lazy(t) or t.is_meta or t.layout != torch.strided:
            return None
        storage = t.untyped_storage()
        return (t.device.type, t.device.index, storage.data_ptr())
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def _whole(t: torch.Tensor) -> bool:
    """Whether `t` covers its storage exactly (an operation on it fills all of it)."""
    if is_lazy(t):
        return False
    try:
        return t.storage_offset() == 0 and t.numel() * t.element_size() == t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        return False


_T = torch.Tensor
_INIT = torch.nn.init


def _fill(func, self_draw: Draw | None, args, kwargs) -> Draw | None:
    """The law of a tensor after the in-place operation `func` on it (None: unknown)."""
    name = getattr(func, "__name__", "")
    if getattr(func, "__module__", None) == _INIT.__name__:  # an nn.init function seen whole
        if name in ("uniform_",):
            a, b = float(kwargs.get("a", 0.0)), float(kwargs.get("b", 1.0))
            return Draw("uniform", (a + b) / 2, (b - a) / 2)
        if name in ("kaiming_uniform_", "xavier_uniform_"):
            return Draw("uniform")
        if name in ("normal_", "kaiming_normal_", "xavier_normal_"):
            return Draw("normal", float(kwargs.get("mean", 0.0)), float(kwargs.get("std", 1.0)))
        if name == "trunc_normal_":
            mean, std = float(kwargs.get("mean", 0.0)), float(kwargs.get("std", 1.0))
            return Draw("normal", mean, std, (float(kwargs.get("a", -2.0)) - mean) / std,
                        (float(kwargs.get("b", 2.0)) - mean) / std)
        if name in ("constant_", "zeros_", "ones_"):
            return Draw("constant")
        return None
    if func is _T.uniform_:
        a, b = float(_arg(args, kwargs, 1, "from", 0.0)), float(_arg(args, kwargs, 2, "to", 1.0))
        return Draw("uniform", (a + b) / 2, (b - a) / 2)
    if func is _T.normal_:
        return Draw("normal", float(_arg(args, kwargs, 1, "mean", 0.0)), float(_arg(args, kwargs, 2, "std", 1.0)))
    if func in (_T.fill_, _T.zero_):
        return Draw("constant")
    if self_draw is None:
        return None
    if func is _T.erfinv_:  # erfinv(U(a, b)) = Z / sqrt(2), Z standard normal cut to [ndtri((a+1)/2), ndtri((b+1)/2)]
        if self_draw.kind != "uniform":
            return None
        a, b = self_draw.loc - self_draw.scale, self_draw.loc + self_draw.scale
        if a < -1 or b > 1:
            return None
        return Draw("normal", 0.0, 1 / math.sqrt(2), float(_ndtri((a + 1) / 2)),
                    float(_ndtri((b + 1) / 2)))
    other = _scalar(_arg(args, kwargs, 1, "other"))
    if func in (_T.mul_, _T.__imul__) and other is not None:
        return self_draw.scaled(other)
    if func in (_T.div_, _T.__itruediv__) and other is not None and other != 0:
        return self_draw.scaled(1 / other)
    if func in (_T.add_, _T.__iadd__, _T.sub_, _T.__isub__) and other is not None:
        alpha = _scalar(kwargs.get("alpha", 1))
        if alpha is None:
            return None
        sign = -1.0 if func in (_T.sub_, _T.__isub__) else 1.0
        return self_draw.shifted(sign * alpha * other)
    if func in (_T.clamp_, _T.clip_):
        low, high = _arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max")
        if (low is not None and _scalar(low) is None) or (high is not None and _scalar(high) is None):
            return None
        return self_draw.clamped(_scalar(low) if low is not None else None,
                                 _scalar(high) if high is not None else None)
    if func is _T.clamp_min_ and _scalar(_arg(args, kwargs, 1, "min")) is not None:
        return self_draw.clamped(_scalar(_arg(args, kwargs, 1, "min")), None)
    if func is _T.clamp_max_ and _scalar(_arg(args, kwargs, 1, "max")) is not None:
        return self_draw.clamped(None, _scalar(_arg(args, kwargs, 1, "max")))
    return None


# in-place operations that write values without the trailing underscore, and those with one that write none
_WRITES = ("__imul__", "__iadd__", "__isub__", "__itruediv__", "__setitem__")
_KEEPS = ("requires_grad_", "share_memory_", "detach_", "rename_", "t_", "transpose_", "squeeze_", "unsqueeze_",
          "swapdims_", "swapaxes_")

# out-of-place operations whose result keeps a law: new tensors of random numbers, and scalar arithmetic
_FACTORIES = {torch.randn: Draw("normal"), torch.randn_like: Draw("normal"),
              torch.rand: Draw("uniform", 0.5, 0.5), torch.rand_like: Draw("uniform", 0.5, 0.5)}
_SCALE = {_T.mul: 1, _T.__mul__: 1, _T.__rmul__: 1, torch.mul: 1, _T.div: -1, _T.__truediv__: -1, torch.div: -1}
_SHIFT = {_T.add: 1, _T.__add__: 1, _T.__radd__: 1, torch.add: 1, _T.sub: -1, _T.__sub__: -1, torch.sub: -1}


class Recorder(TorchFunctionMode):
    """Follows the law that filled each storage while active (`recording()` enters it)."""

    def __init__(self):
        super().__init__()
        self.draws: dict[Any, Draw | None] = {}

    def draw_of(self, t: torch.Tensor) -> Draw | None:
        """The law that filled all of `t` (None: unknown)."""
        key = _key(t)
        return self.draws.get(key) if key is not None and _whole(t) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        inputs = {_key(a) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        before = self.draw_of(target) if isinstance(target, torch.Tensor) else None
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        in_place = ((name.endswith("_") and not name.startswith("__")) or name in _WRITES) and name not in _KEEPS
        if in_place and isinstance(target, torch.Tensor):
            key = _key(target)
            if key is not None:
                if func is _T.copy_:
                    source = _arg(args, kwargs, 1, "src")
                    draw = self.draw_of(source) if isinstance(source, torch.Tensor) else None
                else:
                    draw = _fill(func, before, args, kwargs)
                self.draws[key] = draw if _whole(target) else None
            return result
        if isinstance(result, torch.Tensor):
            key = _key(result)
            if key is not None and key not in inputs:  # a new storage (a view keeps its storage's law)
                self.draws[key] = self._derived(func, args, kwargs, result)
        elif isinstance(result, (tuple, list)):
            for item in result:
                if isinstance(item, torch.Tensor) and (key := _key(item)) is not None and key not in inputs:
                    self.draws[key] = None
        return result

    def _derived(self, func, args, kwargs, result: torch.Tensor) -> Draw | None:
        if func in _FACTORIES:
            return _FACTORIES[func] if _whole(result) else None
        if func in _SCALE or func in _SHIFT:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            scalars = [s for a in args if not isinstance(a, torch.Tensor) and (s := _scalar(a)) is not None]
            if len(tensors) != 1 or len(scalars) != 1 or kwargs.get("alpha", 1) != 1:
                return None
            source = self.draw_of(tensors[0])
            if source is None:
                return None
            if func in _SCALE:
                if _SCALE[func] < 0 and (args[0] is not tensors[0] or scalars[0] == 0):
                    return None  # scalar / tensor is not a scaling
                return source.scaled(scalars[0] if _SCALE[func] > 0 else 1 / scalars[0])
            reverse = func in (_T.sub, _T.__sub__, torch.sub) and args[0] is not tensors[0]
            if reverse:
                return None  # scalar - tensor: not needed by any initializer
            return source.shifted(_SHIFT[func] * scalars[0])
        return None


@contextlib.contextmanager
def recording() -> Iterator[Recorder]:
    """A `Recorder` active for the duration of the block."""
    recorder = Recorder()
    with recorder:
        yield recorder


def record_laws(model: nn.Module, recorder: Recorder) -> dict[str, str | None]:
    """Store on every module with a weight of two or more dimensions the law that filled it (`weight_law`);
    returns them by the weight's key in `model.state_dict()`."""
    out = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and not is_lazy(weight) and weight.dim() >= 2:  # lazy: drawn later
            draw = recorder.draw_of(weight)
            law = draw.law() if draw is not None else None
            with contextlib.suppress(AttributeError, TypeError):
                object.__setattr__(module, ATTRIBUTE, law)
            out[f"{name}.weight" if name else "weight"] = law
    return out


def weight_law(module: nn.Module | None) -> str | None:
    """The law recorded for the weight of `module` when its model was built by `hparr.models.build_model`
    (None: not recorded, or not one of `hparr.null`'s laws)."""
    return getattr(module, ATTRIBUTE, None) if module is not None else None


def was_recorded(module: nn.Module | None) -> bool:
    """Whether the law of the weight of `module` was looked for when its model was built."""
    return module is not None and ATTRIBUTE in vars(module)

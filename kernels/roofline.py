"""The roofline (pure: values in, values out).

From the measured FLOP/s and bytes/s of a device and a model profile, predict the tokens per
second the device could reach at full use. What those tokens cost is the agent's cost model's
business (agent/costmodel.py ``capacity_rate_micro_per_s``: the same prices and the same
per-device share as billing); kernels/ computes throughput only.

- prefill is compute-bound: ``2 · active_params`` FLOP per prompt token (attention FLOPs
  ignored), so prefill tokens/s = FLOP/s / (2 · active_params);
- a decode step for a batch of B sequences at context length L reads every sequence's KV cache
  and the weights it touches, and does ``2 · B · active_params`` FLOP:
  ``step_s = B · kv_bytes_per_token · L / BW + max(2 · B · active / FLOPs, weight_bytes / BW)``,
  with ``weight_bytes = min(total_params, B · active_params) · bytes_per_param`` (for a dense
  model that is all the weights; an MoE at small batch touches only the active experts);
  decode tokens/s = B / step_s.

Figures are per GPU, as if the weights and the KV cache were spread over as many GPUs as they
need (tensor parallel, communication ignored); memory capacity is not checked. Sliding-window
attention (gpt-oss) is ignored: every layer is charged the full context.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

DEFAULT_BATCH = 64
DEFAULT_CONTEXT_TOKENS = 2048


@dataclass(frozen=True)
class ModelProfile:
    """What the roofline needs to know about a model. Params are counts (not billions)."""

    name: str
    total_params: float
    active_params: float
    layers: int
    kv_heads: int
    head_dim: int
    bytes_per_param: float
    kv_bytes_per_elem: float = 2.0
    compute_dtype: str = "bf16"

    def __post_init__(self) -> None:
        for f in ("total_params", "active_params", "layers", "kv_heads", "head_dim", "bytes_per_param",
                  "kv_bytes_per_elem"):
            if not getattr(self, f) > 0:
                raise ValueError(f"model {self.name!r}: {f} must be positive")
        if self.active_params > self.total_params:
            raise ValueError(f"model {self.name!r}: active_params exceeds total_params")

    @property
    def kv_bytes_per_token(self) -> float:
        """Bytes of KV cache one token adds: K and V, every layer, every KV head."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.kv_bytes_per_elem

    def weight_bytes_per_step(self, batch: int) -> float:
        """Bytes of weights a decode step of ``batch`` sequences reads."""
        return min(self.total_params, batch * self.active_params) * self.bytes_per_param


#: Built-in profiles. Llama 3.1 figures from the model cards and configs (bf16 weights and KV).
#: gpt-oss-120b: 116.8 B total, 5.1 B active per token, 36 layers, 8 KV heads of 64; its MoE
#: weights are MXFP4 (4.25 bits), so the checkpoint's ~65 GB over its params is ~0.56 byte/param.
BUILTIN_PROFILES: dict[str, ModelProfile] = {
    p.name: p
    for p in (
        ModelProfile("llama-3.1-8b", 8.03e9, 8.03e9, 32, 8, 128, 2.0),
        ModelProfile("llama-3.1-70b", 70.55e9, 70.55e9, 80, 8, 128, 2.0),
        ModelProfile("gpt-oss-120b", 116.83e9, 5.13e9, 36, 8, 64, 0.56),
    )
}


def profile_from_dict(name: str, values: Mapping[str, Any]) -> ModelProfile:
    """A profile from a config table; a ValueError names the key that is wrong or missing."""
    known = {f.name for f in fields(ModelProfile)} - {"name"}
    for key in values:
        if key not in known:
            raise ValueError(f"models.{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for key in ("total_params", "active_params", "layers", "kv_heads", "head_dim", "bytes_per_param"):
        if key not in values and not (key == "active_params" and "total_params" in values):
            raise ValueError(f"models.{name}.{key}: missing")
    for key, value in values.items():
        if key == "compute_dtype":
            kwargs[key] = str(value)
            continue
        try:
            kwargs[key] = int(value) if key in ("layers", "kv_heads", "head_dim") else float(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"models.{name}.{key}: not a number: {value!r}") from e
    kwargs.setdefault("active_params", kwargs["total_params"])
    try:
        return ModelProfile(name=name, **kwargs)
    except ValueError as e:
        raise ValueError(f"models.{name}: {e}") from e


def all_profiles(user: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, ModelProfile]:
    """The built-in profiles plus the user's (a user profile of the same name replaces one)."""
    out = dict(BUILTIN_PROFILES)
    for name, values in (user or {}).items():
        out[name] = profile_from_dict(name, values)
    return out


# -- the roofline -----------------------------------------------------------------------------


def prefill_tokens_per_s(profile: ModelProfile, flops_per_s: float) -> float:
    """Prompt tokens per second when prefill is compute-bound."""
    return flops_per_s / (2 * profile.active_params)


def decode_step_s(profile: ModelProfile, batch: int, context_tokens: int, flops_per_s: float,
                  bytes_per_s: float) -> float:
    """Seconds for one decode step of ``batch`` sequences at ``context_tokens`` each."""
    if batch < 1 or context_tokens < 0:
        raise ValueError("batch must be >= 1 and context_tokens >= 0")
    kv_s = batch * profile.kv_bytes_per_token * context_tokens / bytes_per_s
    compute_s = 2 * batch * profile.active_params / flops_per_s
    weights_s = profile.weight_bytes_per_step(batch) / bytes_per_s
    return kv_s + max(compute_s, weights_s)


def decode_tokens_per_s(profile: ModelProfile, batch: int, context_tokens: int, flops_per_s: float,
                        bytes_per_s: float) -> float:
    """Generated tokens per second over the whole batch."""
    return batch / decode_step_s(profile, batch, context_tokens, flops_per_s, bytes_per_s)


# -- capacity ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Capacity:
    """The ceiling one device reaches on one model: tokens/s at full use, and the watts the
    bench measured there (None: unknown)."""

    model: str
    batch: int
    context_tokens: int
    flops_per_s: float
    bytes_per_s: float
    watts: float | None
    prefill_tokens_per_s: float
    decode_tokens_per_s: float


def capacity(profile: ModelProfile, flops_per_s: float, bytes_per_s: float, watts: float | None,
             batch: int = DEFAULT_BATCH, context_tokens: int = DEFAULT_CONTEXT_TOKENS) -> Capacity:
    """Prefill and decode tokens/s at full use of one device for ``profile``."""
    return Capacity(
        model=profile.name, batch=batch, context_tokens=context_tokens, flops_per_s=flops_per_s,
        bytes_per_s=bytes_per_s, watts=watts,
        prefill_tokens_per_s=prefill_tokens_per_s(profile, flops_per_s),
        decode_tokens_per_s=decode_tokens_per_s(profile, batch, context_tokens, flops_per_s, bytes_per_s),
    )

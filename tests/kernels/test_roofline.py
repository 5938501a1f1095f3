import pytest

from meterd.kernels.roofline import (
    BUILTIN_PROFILES, ModelProfile, all_profiles, capacity, decode_step_s, decode_tokens_per_s,
    prefill_tokens_per_s, profile_from_dict,
)

LLAMA8 = BUILTIN_PROFILES["llama-3.1-8b"]
OSS = BUILTIN_PROFILES["gpt-oss-120b"]
FLOPS, BW = 1e15, 3e12  # 1 PFLOP/s, 3 TB/s


def test_kv_bytes_per_token():
    # K and V × 32 layers × 8 KV heads × 128 dims × 2 bytes
    assert LLAMA8.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131072
    # gpt-oss-120b: 2 × 36 × 8 × 64 × 2
    assert OSS.kv_bytes_per_token == 73728


def test_prefill_is_compute_bound():
    # 1e15 / (2 × 8.03e9)
    assert prefill_tokens_per_s(LLAMA8, FLOPS) == pytest.approx(62266.5, rel=1e-6)


def test_decode_step_dense_by_hand():
    kv_s = 64 * 131072 * 2048 / 3e12  # 0.0057266 s: every sequence's KV cache
    compute_s = 2 * 64 * 8.03e9 / 1e15  # 0.0010278 s
    weights_s = 8.03e9 * 2 / 3e12  # 0.0053533 s: all the weights once
    assert weights_s > compute_s  # memory-bound at batch 64
    step = decode_step_s(LLAMA8, 64, 2048, FLOPS, BW)
    assert step == pytest.approx(kv_s + weights_s)
    assert step == pytest.approx(0.0110800, rel=1e-4)
    assert decode_tokens_per_s(LLAMA8, 64, 2048, FLOPS, BW) == pytest.approx(64 / 0.0110800, rel=1e-4)


def test_decode_compute_bound_at_large_batch_without_context():
    # batch 4096, no context: compute 2·4096·8.03e9/1e15 = 0.065782 s > weights 0.0053533 s
    assert decode_step_s(LLAMA8, 4096, 0, FLOPS, BW) == pytest.approx(2 * 4096 * 8.03e9 / 1e15)


def test_moe_reads_only_the_active_experts_at_small_batch():
    # batch 1: min(116.83e9, 1 × 5.13e9) × 0.56 bytes = 2.8728e9 bytes
    assert OSS.weight_bytes_per_step(1) == pytest.approx(5.13e9 * 0.56)
    # batch 64: 64 × 5.13e9 = 328e9 > total, so every expert: 116.83e9 × 0.56
    assert OSS.weight_bytes_per_step(64) == pytest.approx(116.83e9 * 0.56)
    step = decode_step_s(OSS, 1, 1000, FLOPS, BW)
    assert step == pytest.approx(73728 * 1000 / 3e12 + 5.13e9 * 0.56 / 3e12)


def test_capacity_by_hand_is_throughput_only():
    cap = capacity(LLAMA8, FLOPS, BW, 700.0, batch=64, context_tokens=2048)
    decode = 64 / (64 * 131072 * 2048 / 3e12 + 8.03e9 * 2 / 3e12)  # 5776.1 tok/s
    prefill = 1e15 / (2 * 8.03e9)  # 62266.5 tok/s
    assert cap.decode_tokens_per_s == pytest.approx(decode)
    assert cap.prefill_tokens_per_s == pytest.approx(prefill)
    assert cap.watts == 700.0 and not any("cost" in k or "currency" in k for k in vars(cap))


def test_user_profiles_from_config():
    p = profile_from_dict("mine", {"total_params": 1e9, "layers": 16, "kv_heads": 4, "head_dim": 64,
                                   "bytes_per_param": 1})
    assert p.active_params == 1e9 and p.compute_dtype == "bf16" and p.layers == 16
    profiles = all_profiles({"mine": {"total_params": 2e9, "active_params": 1e9, "layers": 2, "kv_heads": 1,
                                      "head_dim": 8, "bytes_per_param": 2}})
    assert set(profiles) == set(BUILTIN_PROFILES) | {"mine"}
    with pytest.raises(ValueError, match="models.x.color"):
        profile_from_dict("x", {"color": 1})
    with pytest.raises(ValueError, match="models.x.layers: missing"):
        profile_from_dict("x", {"total_params": 1e9, "kv_heads": 1, "head_dim": 8, "bytes_per_param": 2})
    with pytest.raises(ValueError, match="models.x.layers: not a number"):
        profile_from_dict("x", {"total_params": 1e9, "layers": "many", "kv_heads": 1, "head_dim": 8,
                                "bytes_per_param": 2})
    with pytest.raises(ValueError, match="active_params exceeds"):
        ModelProfile("y", 1e9, 2e9, 1, 1, 1, 2.0)

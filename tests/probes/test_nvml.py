import pytest

from meterd.probes.device import NullGpus
from meterd.errors import GpuLost, NvmlCallError
from meterd.probes.nvml import NvidiaGpus, decode_throttle_reasons, get_gpus, nvml_query
from tests.fakes.nvml import FakeMig, GiB, a100, h100, integrate, p100


def test_enumerates_identity_of_every_gpu(fake_nvml, clock):
    fake = fake_nvml([h100(), a100()])
    gpus = get_gpus(clock)
    devs = gpus.devices()
    assert [d.name for d in devs] == ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"]
    assert [d.id for d in devs] == [g.uuid for g in fake.gpus]
    assert devs[1].pci_bus_id == "00000000:19:00.0"
    assert gpus.driver_version() == "570.124.06"


def test_hopper_reports_instant_power_and_energy_counter(fake_nvml, clock):
    fake = fake_nvml([h100(curve=[(0, 100.0), (10, 600.0)])])
    (gpu,) = get_gpus(clock).devices()
    clock.advance(5)
    s = gpu.sample()
    assert s.state == "ok"
    assert s.power_w.value == pytest.approx(350.0)
    assert s.power_w.source == "instant"
    assert s.extra["power_average_w"] == pytest.approx(integrate([(0, 100.0), (10, 600.0)], 4, 5), abs=1e-3)
    # energy over the first 5 s of a ramp 100 W -> 350 W is the trapezoid 5 * (100+350)/2
    assert s.energy_j.value == pytest.approx(1125.0, abs=1e-3)
    assert s.energy_j.source == "counter"
    assert s.at == clock()
    assert s.util_pct.value == pytest.approx(round((350 - 70) / 630 * 100))
    assert s.mem_total_bytes == 80 * GiB


def test_energy_counter_reset_starts_again_from_zero(fake_nvml, clock):
    fake = fake_nvml([h100(curve=[(0, 200.0)])])
    (gpu,) = get_gpus(clock).devices()
    clock.advance(10)
    assert gpu.sample().energy_j.value == pytest.approx(2000.0)
    fake.reset_energy(0)
    clock.advance(3)
    assert gpu.sample().energy_j.value == pytest.approx(600.0)


def test_not_supported_fields_are_none_not_errors(fake_nvml, clock):
    fake_nvml([p100(curve=[(0, 120.0)])])
    (gpu,) = get_gpus(clock).devices()
    s = gpu.sample()
    assert s.state == "ok"
    assert s.energy_j is None  # no energy counter before Volta
    assert s.extra["power_average_w"] is None  # no power fields before Hopper
    assert s.extra["mig"] is None  # no MIG on Pascal
    assert s.power_w.value == pytest.approx(120.0)
    assert s.power_w.source == "instant"  # nvmlDeviceGetPowerUsage is instantaneous before Ampere


def test_a100_power_usage_is_instant_but_ampere_others_average(fake_nvml, clock):
    fake_nvml([a100(curve=[(0, 100.0)]), a100(name="NVIDIA A10G", curve=[(0, 100.0)])])
    devs = get_gpus(clock).devices()
    clock.advance(2)
    assert devs[0].sample().power_w.source == "instant"
    assert devs[1].sample().power_w.source == "average"


def test_lost_gpu_is_reported_lost_and_others_go_on(fake_nvml, clock):
    fake = fake_nvml([h100(), h100(), h100()])
    devs = get_gpus(clock).devices()
    fake.lose(1, after_s=2)
    clock.advance(1)
    assert [d.sample().state for d in devs] == ["ok", "ok", "ok"]
    clock.advance(2)
    samples = [d.sample() for d in devs]
    assert [s.state for s in samples] == ["ok", "lost", "ok"]
    assert "lost" in samples[1].reason
    assert samples[1].power_w is None
    # once lost, it stays lost without asking NVML again
    n_calls = len(fake.calls)
    assert devs[1].sample().state == "lost"
    assert len(fake.calls) == n_calls


def test_gpu_lost_before_enumeration_is_listed_lost(fake_nvml, clock):
    fake = fake_nvml([h100(), h100()])
    fake.gpus[0].lost_at = 0.0
    devs = get_gpus(clock).devices()
    assert [d.sample().state for d in devs] == ["lost", "ok"]


@pytest.mark.parametrize("missing", ["library", "driver"])
def test_no_library_or_driver_means_no_gpus(fake_nvml, clock, missing):
    fake_nvml(missing=missing)
    gpus = get_gpus(clock)
    assert isinstance(gpus, NullGpus)
    assert gpus.devices() == []
    assert "NVML not available" in gpus.reason


def test_mig_instances_are_enumerated(fake_nvml, clock):
    migs = [FakeMig(1, 0, 10 * GiB, 2 * GiB), FakeMig(2, 0, 20 * GiB)]
    fake_nvml([h100(mig=migs), h100()])
    devs = get_gpus(clock).devices()
    mig = devs[0].sample().extra["mig"]
    assert [(m["gpu_instance_id"], m["mem_total_bytes"], m["mem_used_bytes"]) for m in mig] == [
        (1, 10 * GiB, 2 * GiB), (2, 20 * GiB, 0)]
    assert all(m["uuid"].startswith("MIG-") for m in mig)
    assert devs[1].sample().extra["mig"] is None  # MIG-capable but disabled


def test_processes_throttle_and_limits(fake_nvml, clock):
    import pynvml
    fake_nvml([h100(processes=[(4242, 3 * GiB)],
                    throttle_mask=pynvml.nvmlClocksThrottleReasonSwPowerCap | pynvml.nvmlClocksThrottleReasonGpuIdle,
                    power_limit_w=650)])
    (gpu,) = get_gpus(clock).devices()
    x = gpu.sample().extra
    assert x["processes"] == [{"pid": 4242, "used_memory_bytes": 3 * GiB}]
    assert x["throttle_reasons"] == ["gpu_idle", "sw_power_cap"]
    assert x["power_limit_w"] == 650
    assert x["sm_clock_mhz"] == 1980 and x["temperature_c"] == 41


def test_gateway_tries_versioned_names_and_converts_errors(fake_nvml, clock):
    fake = fake_nvml([h100()])
    NvidiaGpus(clock)
    h = fake.module.nvmlDeviceGetHandleByIndex(0)
    # an unknown name falls through to the one that exists
    assert nvml_query(("nvmlDeviceGetNoSuchThing", "nvmlDeviceGetTemperature"), h, 0) == 41
    assert nvml_query("nvmlDeviceGetNoSuchThing", h, default="dflt") == "dflt"
    with pytest.raises(NvmlCallError) as e:
        nvml_query("nvmlDeviceGetHandleByIndex", 99)
    assert isinstance(e.value.__cause__, fake.module.NVMLError)
    fake.lose(0)
    with pytest.raises(GpuLost):
        nvml_query("nvmlDeviceGetTemperature", h, 0)


def test_decode_throttle_reasons():
    assert decode_throttle_reasons(None) is None
    assert decode_throttle_reasons(0) == []
    assert decode_throttle_reasons(0x40) == ["hw_thermal_slowdown"]


def test_light_sample_reads_only_what_metering_needs(fake_nvml, clock):
    fake = fake_nvml([h100(mig=[FakeMig(1, 0, 10 * GiB)], processes=[(1, GiB)])])
    (gpu,) = get_gpus(clock).devices()
    fake.calls.clear()
    light = gpu.sample(detail=False)
    light_calls = list(fake.calls)
    fake.calls.clear()
    full = gpu.sample()
    assert light.power_w == full.power_w and light.energy_j == full.energy_j and light.util_pct == full.util_pct
    assert "mig" not in light.extra and full.extra["mig"]
    assert not {"nvmlDeviceGetMigMode", "nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetClockInfo",
                "nvmlDeviceGetTemperature"} & set(light_calls)
    assert len(light_calls) <= 5 < len(fake.calls)


@pytest.mark.parametrize("denied", ["nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetFieldValues"])
def test_a_field_denied_by_permission_is_absent_and_the_rest_is_read(fake_nvml, clock, denied):
    # NO_PERMISSION on one field (a container without the capability, a locked-down driver) is
    # that field missing: the sample stays ok with everything else, and the agent falls back to
    # power (or the other power query) instead of marking the GPU failed.
    from tests.fakes.nvml import ERROR_CODES

    fake = fake_nvml([h100(curve=[(0, 300.0)])])
    (gpu,) = get_gpus(clock).devices()
    clock.advance(5)
    fake.fail(ERROR_CODES["NVML_ERROR_NO_PERMISSION"], {denied})
    s = gpu.sample(detail=False)
    assert s.state == "ok" and s.reason is None
    assert s.power_w is not None and s.power_w.value == pytest.approx(300.0)
    assert s.util_pct is not None and s.mem_used_bytes is not None
    if denied == "nvmlDeviceGetTotalEnergyConsumption":
        assert s.energy_j is None  # absent, so windows integrate power
    else:
        assert s.energy_j.source == "counter" and s.power_w.source == "average"  # nvmlDeviceGetPowerUsage

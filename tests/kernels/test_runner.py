import numpy as np
import pytest

from meterd.kernels.base import BOUNDS, Kernel, KernelIncorrect, Timer, check_close
from meterd.kernels.cpu import CpuCopy, CpuGemm, CpuTriad, rotation_sets
from meterd.kernels.runner import Runner, RunnerOptions, to_point
from meterd.probes.nvml import NvidiaGpus
from meterd.probes.readings import DeviceSample, Reading
from tests.fakes.nvml import ManualClock, h100


class FakeTimer(Timer):
    """Each call takes the next duration of ``per_call_s`` (cycled); the manual clock moves on."""

    def __init__(self, clock, per_call_s):
        self.clock, self.per_call_s, self.n = clock, list(per_call_s), 0

    def time_calls(self, run, first, calls):
        total = 0.0
        for i in range(first, first + calls):
            run(i)
            total += self.per_call_s[self.n % len(self.per_call_s)]
            self.n += 1
        self.clock.advance(total)
        return total


class FakeKernel(Kernel):
    name, dtype, unit, work_per_call = "gemm", "fp32", "flop/s", 1e9

    def __init__(self, timer):
        self.timer, self.used_sets, self.checked, self.torn_down = timer, set(), False, False

    def setup(self):
        self.ready = True

    def run(self, i):
        self.used_sets.add(i % self.sets)

    def check(self, seed):
        self.checked = True
        return 0.0

    def teardown(self):
        self.torn_down = True


def test_repeats_until_the_minimum_duration_and_reports_the_median():
    clock = ManualClock(0.0)
    per_call = 2.0**-7  # 7.8125 ms, exact in binary so the clock adds up exactly
    k = FakeKernel(FakeTimer(clock, [per_call]))
    m = Runner(RunnerOptions(min_duration_s=1.0, warmup_s=0.1, min_repeats=5), clock=clock).measure(k)
    assert k.checked and k.torn_down and k.used_sets == {0, 1}  # buffers rotated
    assert m.value == 1e9 / per_call and m.spread == 0.0
    # batches aim at min_duration/10 = 0.1 s: round(0.1 / 0.0078125) = 13 calls = 0.1015625 s;
    # 10 of them pass 1 s (1.015625 s)
    assert m.repeats == 10 and m.calls == 130
    assert m.duration_s == 1.015625 and m.work == 130 * 1e9
    assert m.energy is None and m.per_joule is None


def test_the_median_ignores_a_slow_outlier():
    clock = ManualClock(0.0)
    # one call per batch (batch_s tiny); per-call times cycle 1, 1, 1, 1, 10 ms after warm-up
    k = FakeKernel(FakeTimer(clock, [0.001, 0.001, 0.001, 0.001, 0.010]))
    opts = RunnerOptions(min_duration_s=0.0, warmup_s=0.0, min_repeats=5, batch_s=1e-9)
    m = Runner(opts, clock=clock).measure(k)
    assert m.repeats == 5
    assert m.value == pytest.approx(1e9 / 0.001)


def test_energy_from_the_fake_gpus_counter(fake_nvml, clock):
    fake_nvml([h100(curve=[(0.0, 350.0)])])
    gpu = NvidiaGpus(clock).devices()[0]
    k = FakeKernel(FakeTimer(clock, [0.02]))
    m = Runner(RunnerOptions(min_duration_s=1.0, warmup_s=0.1), clock=clock, sampler=gpu.sample).measure(k)
    assert m.energy.source == "counter"
    assert m.energy.watts == pytest.approx(350.0)
    assert m.energy.energy_j == pytest.approx(350.0 * m.duration_s)
    assert m.per_joule == pytest.approx(m.work / m.energy.energy_j)
    assert m.per_joule_unit == "flop/J"


def test_energy_integrated_when_the_counter_resets_mid_run(fake_nvml, clock):
    fake = fake_nvml([h100(curve=[(0.0, 200.0)])])
    gpu = NvidiaGpus(clock).devices()[0]
    timer = FakeTimer(clock, [0.02])
    k = FakeKernel(timer)
    samples = []

    def sampler():
        if len(samples) == 2:  # the third sample (0.5 s in) reads a counter that restarted
            fake.reset_energy(0)
        s = gpu.sample()
        samples.append(s)
        return s

    # counter present: samples at least 5 × 0.1 s apart between batches of 0.22 s, none in the
    # last 0.5 s: start, 0.66 s, 1.32 s (the counter has restarted), end
    m = Runner(RunnerOptions(min_duration_s=2.2, warmup_s=0.1), clock=clock, sampler=sampler).measure(k)
    assert len(samples) == 4
    assert m.energy.source == "integrated"
    assert m.energy.watts == pytest.approx(200.0)


def test_estimated_power_stays_estimated(clock):
    def sampler():
        return DeviceSample("cpu", "cpu", "CPU", clock(), power_w=Reading(20.0, "estimated", clock()))

    k = FakeKernel(FakeTimer(clock, [0.05]))
    m = Runner(RunnerOptions(min_duration_s=0.5, warmup_s=0.0), clock=clock, sampler=sampler).measure(k)
    assert m.energy.source == "estimated" and m.energy.watts == pytest.approx(20.0)


def test_a_lost_device_gives_no_energy():
    lost = DeviceSample("gpu0", "gpu", "GPU", 0.0, state="lost", power_w=Reading(1.0, "instant", 0.0))
    assert to_point(5.0, lost).power_w is None


# -- the correctness gate ----------------------------------------------------------------------


class TransposedGemm(CpuGemm):
    def compute(self, a, b, out):
        np.matmul(a, b.T, out=out)


class SlightlyOffGemm(CpuGemm):
    def compute(self, a, b, out):
        np.matmul(a, b, out=out)
        out *= 1 + 1e-6  # far beyond fp64's bound, invisible in a throughput figure


class WrongCopy(CpuCopy):
    def compute(self, arrs, part):
        arrs[1][part] = arrs[0][part][::-1]


class WrongTriad(CpuTriad):
    def compute(self, arrs, part):
        np.add(arrs[1][part], 2.0 * arrs[2][part], out=arrs[0][part])


@pytest.mark.parametrize("kernel", [TransposedGemm("fp32", 64), SlightlyOffGemm("fp64", 64),
                                    WrongCopy(4096), WrongTriad(4096)], ids=lambda k: type(k).__name__)
def test_a_wrong_kernel_fails_loudly_and_reports_nothing(kernel, clock):
    with pytest.raises(KernelIncorrect):
        Runner(RunnerOptions(min_duration_s=0.01, warmup_s=0.0), clock=clock).measure(kernel)
    assert kernel._bufs == []  # never set up, never timed


@pytest.mark.parametrize("kernel", [CpuGemm("fp64", 96), CpuGemm("fp32", 96), CpuCopy(5000), CpuTriad(5000)],
                         ids=lambda k: k.label)
def test_the_real_cpu_kernels_pass_their_gate(kernel):
    err = kernel.check(seed=7)
    assert 0.0 <= err <= (BOUNDS.get(kernel.dtype, 1e-15) if kernel.name == "gemm" else 1e-15)


def test_check_close_rejects_nan_and_wrong_shapes():
    ones = np.ones(3)
    assert check_close("x", ones, ones, ones, 0.0) == 0.0
    with pytest.raises(KernelIncorrect, match="NaN"):
        check_close("x", np.array([1.0, np.nan, 1.0]), ones, ones, 1.0)
    with pytest.raises(KernelIncorrect, match="shape"):
        check_close("x", np.ones(2), ones, ones, 1.0)


def test_rotation_spans_four_times_the_cache():
    # 128 MiB sets over a 260 MiB cache: ceil(4 × 260 / 128) = 9 sets
    assert rotation_sets(128 << 20, 260 << 20) == 9
    assert rotation_sets(128 << 20, 1 << 20) == 2  # never fewer than two
    assert rotation_sets(128 << 20, None) == 2

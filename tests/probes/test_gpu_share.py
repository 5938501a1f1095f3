"""Processes and MIG instances on a GPU: the fake NVML's contract (as NVML documents it) and the
probe that reads it (probes/gpu_share.py)."""

from __future__ import annotations

import pynvml as real
import pytest

from meterd.probes.gpu_share import MigActivity, MigMonitor, ProcessUse, ProcessUtilization
from tests.fakes.nvml import GiB, FakeMig, a100, h100


def _err(fn, *args):
    with pytest.raises(real.NVMLError) as e:
        fn(*args)
    return e.value.value


# -- the fake's contract ---------------------------------------------------------------------


def test_process_utilization_cursor_semantics(fake_nvml, clock):
    fake = fake_nvml([h100(processes=[(101, GiB), (202, GiB), (303, GiB)],
                           proc_sm={101: 30, 202: [(0.0, 40.0), (10.0, 60.0)]})])
    m = fake.module
    m.nvmlInit()
    h = m.nvmlDeviceGetHandleByIndex(0)
    # no sample period has ended yet: nothing newer than 0
    assert _err(m.nvmlDeviceGetProcessUtilization, h, 0) == real.NVML_ERROR_NOT_FOUND
    clock.advance(2.5)
    rows = m.nvmlDeviceGetProcessUtilization(h, 0)
    # one sample per busy process, its newest; 303 holds a context but was never busy
    assert {r.pid: (r.timeStamp, r.smUtil) for r in rows} == {
        101: (int((fake.start + 2) * 1e6), 30),
        202: (int((fake.start + 2) * 1e6), 43),  # the mean over [1 s, 2 s] of 40 -> 60 W over 10 s
    }
    assert all(isinstance(r, real.c_nvmlProcessUtilizationSample_t) for r in rows)
    last = max(r.timeStamp for r in rows)
    assert _err(m.nvmlDeviceGetProcessUtilization, h, last) == real.NVML_ERROR_NOT_FOUND
    clock.advance(1.0)
    assert [r.timeStamp for r in m.nvmlDeviceGetProcessUtilization(h, last)] == [int((fake.start + 3) * 1e6)] * 2
    procs = m.nvmlDeviceGetComputeRunningProcesses(h)
    assert [(p.pid, p.usedGpuMemory, p.gpuInstanceId) for p in procs] == [
        (101, GiB, real.NVML_VALUE_NOT_AVAILABLE_uint.value), (202, GiB, real.NVML_VALUE_NOT_AVAILABLE_uint.value),
        (303, GiB, real.NVML_VALUE_NOT_AVAILABLE_uint.value)]


def test_no_per_process_utilization_in_mig_mode(fake_nvml, clock):
    migs = [FakeMig(1, 0, 10 * GiB, processes=[(7, GiB)]), FakeMig(2, 0, 40 * GiB, slices=3, processes=[(8, 2 * GiB)])]
    m = fake_nvml([h100(mig=migs, proc_sm={7: 50})]).module
    m.nvmlInit()
    h = m.nvmlDeviceGetHandleByIndex(0)
    clock.advance(2)
    assert _err(m.nvmlDeviceGetProcessUtilization, h, 0) == real.NVML_ERROR_NOT_SUPPORTED
    # the parent lists every instance's processes with their instance ids; an instance its own
    assert [(p.pid, p.gpuInstanceId) for p in m.nvmlDeviceGetComputeRunningProcesses(h)] == [(7, 1), (8, 2)]
    mig2 = m.nvmlDeviceGetMigDeviceHandleByIndex(h, 1)
    assert [p.pid for p in m.nvmlDeviceGetComputeRunningProcesses(mig2)] == [8]
    assert m.nvmlDeviceGetAttributes(mig2).computeInstanceSliceCount == 3
    assert m.nvmlDeviceIsMigDeviceHandle(mig2) == 1 and m.nvmlDeviceIsMigDeviceHandle(h) == 0
    assert m.nvmlDeviceGetUUID(m.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig2)) == m.nvmlDeviceGetUUID(h)


def test_gpm_mig_samples_average_activity_between_two_samples(fake_nvml, clock):
    migs = [FakeMig(1, 0, 10 * GiB, activity=[(0.0, 20.0), (10.0, 40.0)]), FakeMig(2, 0, 40 * GiB, slices=3)]
    m = fake_nvml([h100(mig=migs), a100()]).module
    m.nvmlInit()
    h, old = m.nvmlDeviceGetHandleByIndex(0), m.nvmlDeviceGetHandleByIndex(1)
    assert m.nvmlGpmQueryDeviceSupport(h).isSupportedDevice == 1
    assert m.nvmlGpmQueryDeviceSupport(old).isSupportedDevice == 0
    s1, s2 = m.nvmlGpmSampleAlloc(), m.nvmlGpmSampleAlloc()
    assert _err(m.nvmlGpmSampleGet, old, s1) == real.NVML_ERROR_NOT_SUPPORTED  # Ampere: no GPM
    assert _err(m.nvmlGpmMigSampleGet, h, 9, s1) == real.NVML_ERROR_NOT_FOUND
    m.nvmlGpmMigSampleGet(h, 1, s1)
    clock.advance(5)
    m.nvmlGpmMigSampleGet(h, 1, s2)
    mg = real.c_nvmlGpmMetricsGet_t()
    mg.version, mg.numMetrics, mg.sample1, mg.sample2 = real.NVML_GPM_METRICS_GET_VERSION, 2, s1, s2
    mg.metrics[0].metricId = real.NVML_GPM_METRIC_SM_UTIL
    mg.metrics[1].metricId = real.NVML_GPM_METRIC_DRAM_BW_UTIL
    m.nvmlGpmMetricsGet(mg)
    assert mg.metrics[0].nvmlReturn == 0 and mg.metrics[0].value == pytest.approx(25.0)
    assert mg.metrics[1].nvmlReturn == real.NVML_ERROR_NOT_SUPPORTED
    mg.sample1, mg.sample2 = s2, s1  # backwards in time
    assert _err(m.nvmlGpmMetricsGet, mg) == real.NVML_ERROR_INVALID_ARGUMENT
    mg.version = 99
    assert _err(m.nvmlGpmMetricsGet, mg) == real.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
    m.nvmlGpmSampleFree(s1)
    assert _err(m.nvmlGpmSampleFree, s1) == real.NVML_ERROR_INVALID_ARGUMENT


# -- the probe ---------------------------------------------------------------------------------


def _handle(fake, i=0):
    fake.module.nvmlInit()
    return fake.module.nvmlDeviceGetHandleByIndex(i)


def test_process_utilization_reads_each_sample_once(fake_nvml, clock):
    fake = fake_nvml([h100(processes=[(101, GiB), (202, 2 * GiB), (303, GiB)], proc_sm={101: 30, 202: 50})])
    reader = ProcessUtilization(_handle(fake))
    clock.advance(1)
    assert reader.read() == [ProcessUse(101, 30, GiB), ProcessUse(202, 50, 2 * GiB), ProcessUse(303, 0, GiB)]
    # the same instant again: the samples were read, so every process was idle since (NOT_FOUND)
    assert reader.read() == [ProcessUse(101, 0, GiB), ProcessUse(202, 0, 2 * GiB), ProcessUse(303, 0, GiB)]
    clock.advance(1)
    assert [p.sm_pct for p in reader.read()] == [30, 50, 0]
    assert reader.supported is True


def test_process_utilization_is_none_where_nvml_does_not_report_it(fake_nvml, clock):
    fake = fake_nvml([h100(mig=[FakeMig(1, 0, 10 * GiB)], processes=[(1, GiB)])])
    reader = ProcessUtilization(_handle(fake))
    clock.advance(1)
    assert reader.read() is None and reader.supported is False
    fake.fail(real.NVML_ERROR_NO_PERMISSION, {"nvmlDeviceGetProcessUtilization"})
    assert reader.read() is None


def test_mig_monitor_gpm_activity_else_slices(fake_nvml, clock):
    migs = [FakeMig(1, 0, 10 * GiB, slices=1, activity=[(0.0, 30.0)]),
            FakeMig(2, 0, 40 * GiB, slices=3, activity=[(0.0, 50.0)])]
    fake = fake_nvml([h100(mig=migs), a100(mig=[FakeMig(1, 0, 10 * GiB, slices=2), FakeMig(2, 0, 10 * GiB, slices=4)])])
    hopper, ampere = MigMonitor(_handle(fake, 0)), MigMonitor(fake.module.nvmlDeviceGetHandleByIndex(1))
    assert hopper.gpm and not ampere.gpm
    first = hopper.read()
    assert [(a.gpu_instance_id, a.slices, a.activity_pct) for a in first] == [(1, 1, None), (2, 3, None)]
    clock.advance(1)
    assert [a.activity_pct for a in hopper.read()] == [pytest.approx(30.0), pytest.approx(50.0)]
    assert [(a.slices, a.activity_pct) for a in ampere.read()] == [(2, None), (4, None)]
    assert all(isinstance(a, MigActivity) and a.uuid.startswith("MIG-") for a in first)
    assert len(fake._gpm) == 2  # one live sample per instance: the older ones were freed

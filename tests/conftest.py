import pytest

from tests.fakes.nvml import FakeNvml, ManualClock


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def fake_nvml(monkeypatch, clock):
    """A factory: fake_nvml([h100(), a100()], missing=None) installs and returns a FakeNvml."""

    def make(gpus=(), **kw) -> FakeNvml:
        kw.setdefault("clock", clock)
        return FakeNvml(list(gpus), **kw).install(monkeypatch)

    return make


@pytest.fixture(autouse=True)
def _never_the_real_nvml(monkeypatch, clock):
    """No test reaches the machine's own NVML: unless a test installs fake GPUs, NVML is missing."""
    FakeNvml([], clock=clock, missing="library").install(monkeypatch)


@pytest.fixture
def no_nvml(fake_nvml):
    """NVML missing entirely: the default for tests that do not ask for GPUs."""
    return fake_nvml(missing="library")


@pytest.fixture(autouse=True)
def _collector_clock_after_test_data(monkeypatch):
    """The tests' windows are dated around 2027 (T0 = 1.8e9), ahead of the real clock: the
    collector's refusal of windows more than a day in the future reads a clock past them (a
    test of that refusal sets its own)."""
    from meterd.collector import validation

    monkeypatch.setattr(validation, "now", lambda: 2_000_000_000.0)

"""cgroup figures as CRI stats: pressure and swap are set where the host has them, left unset (not zero) elsewhere."""

from hostos.cgroups import Pressure, PsiData, Stats
from cri.server.container_convert import cpu_message, io_message, memory_message, swap_message


def test_pressure_and_swap_become_cri_fields():
    psi = Pressure(some=PsiData(10, 1.5, 0.5, 0.25), full=None)
    sample = Stats(timestamp_ns=5, memory_usage=100, memory_working_set=80, swap_usage=30, swap_limit=50,
                   cpu_pressure=psi, memory_pressure=psi, io_pressure=psi)
    cpu = cpu_message(sample, 7)
    assert (cpu.psi.Some.Total, cpu.psi.Some.Avg10, cpu.psi.HasField("Full")) == (10, 1.5, False)
    assert memory_message(sample).psi.Some.Avg300 == 0.25
    assert io_message(sample).psi.Some.Avg60 == 0.5
    swap = swap_message(sample)
    assert (swap.swap_usage_bytes.value, swap.swap_available_bytes.value) == (30, 20)


def test_a_host_without_psi_or_swap_accounting_sends_none():
    sample = Stats(timestamp_ns=5, memory_usage=100)
    assert not cpu_message(sample, None).HasField("psi")
    assert not memory_message(sample).HasField("psi")
    assert io_message(sample) is None and swap_message(sample) is None
    unlimited = swap_message(Stats(timestamp_ns=5, swap_usage=3))
    assert unlimited.swap_usage_bytes.value == 3 and not unlimited.HasField("swap_available_bytes")

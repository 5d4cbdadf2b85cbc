"""The default thread count: physical cores, not logical CPUs."""

from llama_infer.threads import physical_cores


def _cpu(root, cpu: int, package: int, core: int) -> None:
    topology = root / f"cpu{cpu}" / "topology"
    topology.mkdir(parents=True)
    (topology / "physical_package_id").write_text(f"{package}\n")
    (topology / "core_id").write_text(f"{core}\n")


def test_hyper_threads_of_one_core_count_once(tmp_path):
    # two sockets, two cores each, two hyper-threads per core (Linux numbers siblings apart)
    for cpu in range(8):
        _cpu(tmp_path, cpu, package=cpu // 2 % 2, core=cpu % 2)
    assert physical_cores(list(range(8)), str(tmp_path)) == 4
    assert physical_cores([0, 4], str(tmp_path)) == 1  # siblings of socket 0's core 0
    assert physical_cores([0, 1, 2], str(tmp_path)) == 3
    # no topology in sysfs (another OS, a container hiding it): every usable CPU counts
    assert physical_cores([0, 1, 2], str(tmp_path / "none")) == 3
    assert physical_cores() >= 1

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray runtime (2 CPUs) shared by the in-process integration tests."""
    import ray

    from raytune_suite.runner import init_ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
                 runtime_env={"worker_process_setup_hook":
                              "raytune_suite.runner.quiet_worker_logs"})
    init_ray(None)  # no-op: already initialised
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.integration)

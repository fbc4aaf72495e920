import pytest

from helpers import shared_ray


@pytest.fixture
def ray_local():
    """An embedded Ray runtime (2 CPUs), shared by the in-process integration tests and
    started again if a simulated-cluster test shut it down."""
    return shared_ray()


@pytest.fixture
def no_ray():
    """A test that builds its own Ray cluster: no embedded runtime before or after."""
    import ray

    ray.shutdown()
    yield
    ray.shutdown()


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.integration)
    # The simulated-cluster tests and those that want no embedded runtime (`no_ray`) shut
    # the shared one down: run them after every other integration test, so that
    # `ray_local` starts it once (~5 s), not again after each of them.
    def shuts_ray_down(item) -> bool:
        return (item.path.name == "test_multinode.py"
                or "no_ray" in getattr(item, "fixturenames", ()))

    last = [i for i in items if shuts_ray_down(i)]
    rest = [i for i in items if not shuts_ray_down(i)]
    integration = [k for k, i in enumerate(rest) if "integration" in i.path.parts]
    if last and integration:
        items[:] = rest[:integration[-1] + 1] + last + rest[integration[-1] + 1:]

import os

# Workers share this venv; never let Ray re-package the checkout under `uv run`.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")

import shutil  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty working directory (where results and mlflow.db would land)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where CUDA is available (never in CI)."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_gpu = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip)


# Headless Chromium (Debian's chromium + chromium-driver, installed by .ci/run) driven by
# selenium, for everything a person looks at: the HTML report, the MLflow UI.
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--window-size=1600,1200"]


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session. ``helpers.js_errors(browser)`` gives the
    page's console messages (JavaScript errors among them) since the last call."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.fail("browser tests need Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; .ci/run does it)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_bin), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def pytest_sessionfinish(session, exitstatus):
    """The shared embedded Ray runtime (``helpers.shared_ray``), if a test started it."""
    import sys

    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()

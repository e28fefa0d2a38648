"""Session-wide test setup.

Eight fake CPU devices are configured before JAX is imported anywhere, so sharding tests
can build real meshes; single-device tests place work on `jax.devices()[0]` explicitly.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# The project's read-only fixtures (the T5X checkpoint, XTREME-UP data): `shared/` beside the
# checkout, or wherever FIAT_T5X_SHARED points (a clone made elsewhere).
SHARED = pathlib.Path(os.environ.get("FIAT_T5X_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """The shared fixtures directory (tests only)."""
    if not SHARED.is_dir():
        pytest.fail(
            f"expected the shared fixtures at {SHARED}: clone beside the project's shared/ "
            "folder or set FIAT_T5X_SHARED=/path/to/shared"
        )
    return SHARED

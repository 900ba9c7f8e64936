"""ensure_directories: owner-only directories, and mounted volumes it does not own left as
they are (Kubernetes mounts an emptyDir or PVC owned by root, group fsGroup)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.config import Settings, ensure_directories


@pytest.fixture(autouse=True)
def keep_umask() -> Iterator[None]:
    """ensure_directories sets the process umask to 077; put the test runner's back."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def test_own_directories_are_made_owner_only(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    settings.var_dir.mkdir(mode=0o755)
    ensure_directories(settings)
    for directory in (settings.var_dir, settings.upload_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a directory someone else owns")
def test_a_mounted_volume_it_does_not_own_is_left_alone(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    settings.upload_dir.mkdir(parents=True)
    os.chown(settings.upload_dir, 4242, 4242)  # as a volume root owned by someone else
    settings.upload_dir.chmod(0o2770)
    ensure_directories(settings)  # as root it could chmod; it must not
    assert stat.S_IMODE(settings.upload_dir.stat().st_mode) == 0o2770
    assert stat.S_IMODE(settings.var_dir.stat().st_mode) == 0o700

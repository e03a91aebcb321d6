"""Files are written with the process umask (0644 under the usual 022), checkpoints included: mkstemp's 0600
would hide results from labmates on a shared cluster."""
import os
import stat

import pytest

from benchmark import checkpoint
from benchmark.results import write_json


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_json_and_checkpoints_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    write_json(tmp_path / "config.json", {"a": 1})
    ckpt = checkpoint.save(tmp_path / "checkpoints", 3, {"step": 3})
    assert checkpoint.process_umask() == mask
    for p in (tmp_path / "config.json", ckpt, ckpt.with_suffix(".sha256")):
        assert _mode(p) == expected, (p.name, oct(_mode(p)))

"""tf32_matmuls: TF32 for float32 matmuls on CUDA inside the block, the previous setting back after it (the flag is
process-wide, and a run inside a longer process must not leave it changed). The flag is settable on a CPU build."""

from __future__ import annotations

import pytest
import torch

from miras.ops.precision import tf32_matmuls

MATMUL = torch.backends.cuda.matmul


@pytest.fixture(autouse=True)
def restore_flag():
    before = MATMUL.allow_tf32
    yield
    MATMUL.allow_tf32 = before


@pytest.mark.parametrize("before", [False, True])
def test_tf32_inside_the_block_and_the_setting_restored_after(before):
    MATMUL.allow_tf32 = before
    with tf32_matmuls(True):
        assert MATMUL.allow_tf32 and MATMUL.fp32_precision == "tf32"
        # the legacy flag keeps the newer API in step; setting only the newer one makes this raise
        assert torch.get_float32_matmul_precision() == "high"
    assert MATMUL.allow_tf32 is before


def test_restored_when_the_block_raises():
    MATMUL.allow_tf32 = False
    with pytest.raises(RuntimeError, match="inside"):
        with tf32_matmuls(True):
            raise RuntimeError("inside")
    assert not MATMUL.allow_tf32


def test_disabled_leaves_the_setting_alone():
    MATMUL.allow_tf32 = False
    with tf32_matmuls(False):
        assert not MATMUL.allow_tf32 and torch.get_float32_matmul_precision() == "highest"
    assert not MATMUL.allow_tf32

"""The shared argument checks: resolve_device (every --device and device field) and check_int (every count)."""

import pytest
import torch

from miras.checks import check_int
from miras.device import resolve_device
from miras.train.config import ConfigError

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def test_auto_and_explicit_devices():
    assert (
        resolve_device("auto") == resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_bad_device_name_is_refused_naming_the_field_and_the_choices():
    with pytest.raises(ValueError, match=r"^--device: 'gpu' is not a device; choose one of auto, cpu, cuda or cuda:N$"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="^device: 'meta' is not a device") as info:
        resolve_device("meta", "device", error=ConfigError)
    assert info.value.field == "device"


@NO_CUDA
def test_cuda_without_a_gpu_is_refused_or_falls_back_to_the_cpu():
    with pytest.raises(ValueError, match="^--device: cuda:1 was asked for but torch sees no CUDA device$"):
        resolve_device("cuda:1")
    assert resolve_device("cuda:0", "device", cuda_fallback=True) == torch.device("cpu")


def test_check_int():
    assert check_int("n", 3) == 3 and check_int("seed", 0, low=0) == 0 and check_int("steps", -1, unset=-1) == -1
    for value, message in (
        (0, "n must be >= 1, got 0"),
        (True, "n must be an integer, got True"),
        (2.0, "n must be an integer, got 2.0"),
        ("3", "n must be an integer, got '3'"),
    ):
        with pytest.raises(ValueError, match=f"^{message}$"):
            check_int("n", value)
    with pytest.raises(ConfigError, match=r"^steps: must be >= 1 \(or -1: unset\), got -2$"):
        check_int("steps", -2, unset=-1, error=ConfigError)

"""Profiles and overrides: one typed place, loud failures for unknown names."""

import pytest

from pneumolib.config import PAPER_TEST_FRAC, PROFILES, get_config
from pneumolib.errors import ConfigError


def test_profiles_exist_and_paper_is_the_paper():
    assert set(PROFILES) == {"smoke", "demo", "paper"}
    p = get_config("paper", data="/some/where")
    assert (p.image_size, p.batch_size, p.lr, p.max_epochs, p.patience, p.min_delta) == (512, 32, 1e-4, 50, 5, 0.001)
    assert (p.precision, p.devices, p.strategy, p.base_width) == ("16-mixed", "2", "ddp", 64)
    assert p.protocol == "paper" and not p.online_aug and p.unet_norm == "none"
    assert p.test_frac == PAPER_TEST_FRAC == 1952 / 17385


def test_paper_profile_refuses_phantom_unless_told():
    with pytest.raises(ConfigError, match="needs the real SIIM-ACR data"):
        get_config("paper")
    assert get_config("paper", allow_phantom=True).uses_phantom


def test_unknown_profile_and_parameter_list_valid_names():
    with pytest.raises(ConfigError, match="smoke"):
        get_config("fast")
    with pytest.raises(ConfigError, match="max_epochs"):
        get_config("demo", max_epoch=3)


def test_string_values_are_coerced_and_checked():
    c = get_config("demo", max_epochs="3", online_aug="false", lr="0.01", data="none")
    assert (c.max_epochs, c.online_aug, c.lr, c.data) == (3, False, 0.01, None)
    with pytest.raises(ConfigError, match="max_epochs"):
        get_config("demo", max_epochs="three")
    with pytest.raises(ConfigError, match="divisible by 16"):
        get_config("demo", image_size=100)
    with pytest.raises(ConfigError, match="protocol"):
        get_config("demo", protocol="leaky")


def test_config_is_frozen():
    c = get_config("smoke")
    with pytest.raises(Exception):
        c.max_epochs = 5  # type: ignore[misc]

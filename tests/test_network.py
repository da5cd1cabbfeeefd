import pytest
import torch

from dip_compile.config import NetConfig
from dip_compile.network import build_network, count_parameters, make_input
from dip_compile.presets import PAPER_INPAINT_NET, PAPER_NET


def test_paper_denoising_net_has_the_original_parameter_count():
    assert count_parameters(build_network(PAPER_NET)) == 2_217_831


def test_paper_kate_inpainting_net_has_the_original_parameter_count():
    assert count_parameters(build_network(PAPER_INPAINT_NET)) == 3_002_627


@pytest.mark.parametrize("structure", ["paper", "seed"])
@pytest.mark.parametrize("upsample", ["nearest", "bilinear", "bicubic"])
def test_output_has_input_size_and_lies_in_unit_interval(structure, upsample):
    cfg = NetConfig(
        structure=structure,
        upsample=upsample,
        input_depth=4,
        channels_down=(8, 8, 8),
        channels_up=(8, 8, 8),
        channels_skip=(2, 0, 2),
    )
    out = build_network(cfg)(make_input(cfg, 32, 24, seed=0))
    assert out.shape == (1, 3, 32, 24)
    assert 0 < out.min() and out.max() < 1


def test_grayscale_net_outputs_one_channel_with_zero_padding():
    cfg = NetConfig(
        output_channels=1,
        padding="zeros",
        input_depth=4,
        channels_down=(8, 8),
        channels_up=(8, 8),
        channels_skip=(4, 4),
        need_1x1_up=False,
    )
    assert build_network(cfg)(make_input(cfg, 16, 16, 0)).shape == (1, 1, 16, 16)


def test_batchnorm_uses_the_statistics_of_the_input_in_eval_mode_too():
    cfg = NetConfig(input_depth=4, channels_down=(8, 8), channels_up=(8, 8), channels_skip=(4, 4))
    net = build_network(cfg)
    x = make_input(cfg, 16, 16, 0)
    train_out = net.train()(x)
    assert torch.equal(net.eval()(x), train_out)
    assert not list(net.buffers())


def test_fixed_input_is_seeded_and_scaled_like_the_paper():
    cfg = NetConfig()
    a, b = make_input(cfg, 32, 32, seed=3), make_input(cfg, 32, 32, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, make_input(cfg, 32, 32, seed=4))
    assert a.shape == (1, 32, 32, 32) and 0 <= a.min() and a.max() < 0.1


def test_meshgrid_input_spans_the_unit_square():
    cfg = NetConfig(input_kind="meshgrid", input_depth=2)
    grid = make_input(cfg, 8, 16, seed=0)
    assert grid.shape == (1, 2, 8, 16)
    assert grid[0, 0, 0, -1] == 1 and grid[0, 1, -1, 0] == 1 and grid.min() == 0


@pytest.mark.parametrize(
    "bad",
    [
        dict(channels_down=(8,), channels_up=(8, 8), channels_skip=(4, 4)),
        dict(kernel_down=2),
        dict(output_channels=2),
        dict(channels_skip=(-1,) * 5),
    ],
)
def test_inconsistent_network_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        NetConfig(**bad)

import copy
import dataclasses

import pytest
import torch
from torch import nn

from dip_compile.config import ConfigError, FitConfig, NetConfig
from dip_compile.degradations import Downsampler
from dip_compile.network import GENERATORS, build_network, count_parameters, make_input
from dip_compile.presets import PAPER_INPAINT_NET, PAPER_NET, PRESETS
from dip_compile.problem import canvas_for


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


@pytest.mark.parametrize(
    "mode, module", [("avg", nn.AvgPool2d), ("max", nn.MaxPool2d), ("lanczos2", Downsampler), ("stride", None)]
)
def test_downsampling_modes_halve_the_size_like_the_original(mode, module):
    """Stride: a stride-2 conv; the others: a stride-1 conv followed by the pooling or the Lanczos2 filter."""
    cfg = NetConfig(input_depth=4, channels_down=(8, 8), channels_up=(8, 8), channels_skip=(4, 4), downsample=mode)
    net = build_network(cfg)
    first = net.body.down[0]
    assert first.stride == ((2, 2) if module is None else (1, 1))
    if module is not None:
        assert isinstance(net.body.down[1], module)
    assert net(make_input(cfg, 16, 24, 0)).shape == (1, 3, 16, 24)
    trainable = count_parameters(net)
    assert trainable == count_parameters(build_network(dataclasses.replace(cfg, downsample=("stride",))))


def test_per_level_options_apply_level_by_level():
    cfg = NetConfig(
        input_depth=4,
        channels_down=(8, 8, 8),
        channels_up=(8, 8, 8),
        channels_skip=(4, 4, 4),
        upsample=("nearest", "bilinear", "bicubic"),
        kernel_down=(3, 5, 1),
        kernel_up=(1, 3, 5),
    )
    levels, level = [], build_network(cfg).body
    while level is not None:
        levels.append(level)
        level = level.deeper
    assert [lv.upsample.mode for lv in levels] == ["nearest", "bilinear", "bicubic"]
    assert [lv.down[0].kernel_size[0] for lv in levels] == [3, 5, 1]
    assert [lv.up[0].kernel_size[0] for lv in levels] == [1, 3, 5]
    assert cfg.min_coarsest == 3  # kernel 5 pads by 2: the coarsest side must be larger


def test_image_input_is_the_guide_centred_on_the_canvas():
    cfg = NetConfig(input_kind="image", input_depth=3)
    guide = torch.rand(3, 20, 30)
    fixed = make_input(cfg, 32, 32, seed=0, guide=guide)
    assert fixed.shape == (1, 3, 32, 32)
    assert torch.equal(fixed[0, :, 6:26, 1:31], guide)


def test_configs_saved_before_per_level_options_still_load():
    saved = FitConfig().to_dict()
    saved["net"].update(upsample="nearest", kernel_down=3, kernel_up=3)
    del saved["net"]["downsample"]
    net = FitConfig.from_dict(saved).net
    assert net.upsample == ("nearest",) and net.kernel_down == (3,) and net.downsample == ("stride",)


@pytest.mark.parametrize("generator, kernel", [("convdecoder", 3), ("deepdecoder", 1)])
def test_decoders_grow_a_small_input_to_the_canvas(generator, kernel):
    cfg = NetConfig(
        generator=generator, input_depth=8, channels_down=(8, 8, 8), channels_up=(8, 8, 8), channels_skip=(0, 0, 0),
        kernel_up=kernel,
    )  # fmt: skip
    assert cfg.input_shape((32, 48)) == (1, 8, 4, 6)
    fixed = make_input(cfg, 32, 48, seed=0)
    out = build_network(cfg)(fixed)
    assert fixed.shape == (1, 8, 4, 6) and out.shape == (1, 3, 32, 48) and 0 < out.min() and out.max() < 1
    convs = [m for m in build_network(cfg).modules() if isinstance(m, nn.Conv2d)]
    expected = 3 * (8 * 8 * kernel**2 + 8) + (8 * 3 + 3)  # one conv a level, then the 1x1 head
    if generator == "convdecoder":
        expected += 8 * 8 * 9 + 8  # and its last kxk conv
    assert sum(c.weight.numel() + c.bias.numel() for c in convs) == expected


def test_decoders_refuse_meshgrid_and_image_inputs():
    with pytest.raises(ValueError, match="starts from a small noise input"):
        NetConfig(generator="deepdecoder", input_kind="meshgrid", input_depth=2)


@pytest.mark.parametrize(
    "changes",
    [{}, {"structure": "seed", "upsample": ("bicubic",)}, {"channels_skip": (0, 4, 0)}],
    ids=["paper", "seed", "paper-without-some-skips"],
)
def test_save_memory_gives_bit_identical_outputs_and_gradients(changes):
    from dip_compile.network import set_save_memory

    cfg = dataclasses.replace(
        NetConfig(input_depth=4, channels_down=(8, 8, 8), channels_up=(8, 8, 8), channels_skip=(2, 2, 2)), **changes
    )
    x = make_input(cfg, 32, 24, seed=0)
    results = []
    for on in (False, True):
        torch.manual_seed(0)
        net = build_network(cfg)
        set_save_memory(net, on)
        out = net(x)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad for p in net.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1], strict=True))


def test_save_memory_keeps_far_fewer_activations_for_the_backward_pass():
    from dip_compile.estimate import kept_bytes

    default = kept_bytes(PAPER_NET, (64, 64), "fp32")
    saving = kept_bytes(PAPER_NET, (64, 64), "fp32", save_memory=True)
    assert saving < 0.35 * default


def geometry_of(preset_name: str, generator: str) -> NetConfig:
    """A preset's network with ``generator``, as ``dipc fit --preset NAME --generator G`` builds it, at 4 channels a
    level (and at most 2 per skip): the geometry (depth, kernels, strides, padding, upsampling) is the preset's."""
    from dip_compile.restore import NetShape

    net = next(p for p in PRESETS if p.name == preset_name).config.net
    skips = ",".join(str(min(c, 2)) for c in net.channels_skip)
    noise_depth = 4 if generator == "skip" and net.input_kind == "noise" else None
    return NetShape(generator=generator, channels="4", channels_skip=skips, input_depth=noise_depth).apply(net)


@pytest.mark.parametrize("generator", list(GENERATORS))
@pytest.mark.parametrize("preset_name", [p.name for p in PRESETS])
def test_every_preset_and_generator_runs_at_its_smallest_canvas_and_refuses_a_smaller_one(preset_name, generator):
    cfg = geometry_of(preset_name, generator)
    side = cfg.min_side
    assert canvas_for(cfg, (1, 1)) == (side, side)  # the smallest image is fitted on this canvas
    for canvas in ((side, side), (side, side + cfg.multiple)):
        cfg.check_canvas(canvas)
        torch.manual_seed(0)
        net = build_network(cfg).train()  # train mode: BatchNorm needs more than one value per channel
        guide = torch.rand(1, cfg.input_depth, *canvas) if cfg.input_kind == "image" else None
        out = net(make_input(cfg, *canvas, seed=0, guide=guide))
        assert out.shape == (1, cfg.output_channels, *canvas) and bool(torch.isfinite(out).all())
    for smaller in ((side - 1, side), (side, side - cfg.multiple)):
        with pytest.raises(ConfigError, match=f"at least {side} px"):
            cfg.check_canvas(smaller)


def test_the_smallest_canvas_of_five_by_five_kernels_is_tight():
    """The library preset (depth 6, 5x5 down kernels): 3 px at the coarsest level, 192 px a side; one level less
    is the padding failure that the memory estimate once hit at 128 px."""
    cfg = geometry_of("library", "skip")
    assert (cfg.min_coarsest, cfg.min_side) == (3, 192)
    net = build_network(cfg).train()
    with pytest.raises(RuntimeError, match="Padding size should be less than"):
        net(make_input(cfg, 128, 128, seed=0))


@pytest.mark.parametrize("kernel", [1, 3])
def test_a_reflection_padded_conv_pads_bf16_without_autocasts_fp32_round_trip(kernel: int) -> None:
    """Same result as nn.Conv2d (padding copies values), but the padded activation stays bf16 (no cast to fp32)."""
    from torch.profiler import ProfilerActivity, profile

    from dip_compile.network import Conv2d

    ours = Conv2d(4, 6, kernel, padding=(kernel - 1) // 2, padding_mode="reflect")
    theirs = torch.nn.Conv2d(4, 6, kernel, padding=(kernel - 1) // 2, padding_mode="reflect")
    theirs.load_state_dict(ours.state_dict())
    x = torch.rand(1, 4, 9, 7).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            got = ours(x)
        expected = theirs(x)
    assert got.dtype == expected.dtype == torch.bfloat16 and torch.equal(got, expected)
    casts = [e for e in prof.events() if e.name == "aten::_to_copy" and list(e.input_shapes[0]) == list(x.shape)]
    assert not casts, "the activation was cast (autocast's fp32 padding)"
    assert torch.equal(ours(x.float()), theirs(x.float()))  # without autocast: nn.Conv2d's own path


def test_the_2017_framework_starts_batchnorm_from_uniform_scales_and_aligns_the_corners_when_asked():
    """PyTorch 0.2/0.3 (the paper's published outputs): BatchNorm's weight drawn from U(0, 1), bilinear upsampling with
    align_corners=True. Today's defaults stay: ones and False."""
    small = dict(input_depth=4, channels_down=(8, 8), channels_up=(8, 8), channels_skip=(2, 2))
    today, old = NetConfig(**small), NetConfig(**small, bn_init="uniform", align_corners=True)
    torch.manual_seed(0)
    net = build_network(today)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    assert {m.align_corners for m in net.modules() if isinstance(m, nn.Upsample)} == {False}
    torch.manual_seed(0)
    aged = build_network(old)
    scales = torch.cat([m.weight.detach() for m in aged.modules() if isinstance(m, nn.BatchNorm2d)])
    assert len(scales) == sum(m.num_features for m in norms)
    assert 0 <= scales.min() and scales.max() < 1 and scales.std() > 0.1  # U(0, 1): mean 0.5, std 0.29
    torch.manual_seed(0)
    again = torch.cat([m.weight.detach() for m in build_network(old).modules() if isinstance(m, nn.BatchNorm2d)])
    assert torch.equal(again, scales)  # drawn from the seeded generator: a fit stays reproducible
    ups = [m for m in aged.modules() if isinstance(m, nn.Upsample)]
    assert ups and all(m.align_corners for m in ups)
    x = torch.rand(1, 3, 4, 4)
    assert torch.equal(ups[0](x), nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))
    # the same weights with the corners aligned compute another image
    corners = build_network(dataclasses.replace(today, align_corners=True))
    corners.load_state_dict(net.state_dict())
    fixed = make_input(today, 16, 16, 0)
    assert (corners(fixed) - net(fixed)).abs().max() > 1e-4
    assert "BN init uniform, align corners" in old.summary()


def test_align_corners_is_refused_in_one_line_where_nothing_upsamples_bilinearly():
    with pytest.raises(ConfigError, match="--align-corners changes bilinear and bicubic upsampling"):
        NetConfig(upsample="nearest", align_corners=True)
    with pytest.raises(ConfigError, match="--bn-init must be one of ones, uniform"):
        NetConfig(bn_init="random")
    assert NetConfig(upsample=("nearest", "bilinear", "nearest", "nearest", "nearest"), align_corners=True)


@pytest.mark.parametrize("shape", [(1, 5, 1, 1), (1, 3, 1, 4), (2, 8, 7, 5), (1, 16, 12, 10)])
def test_channels_last_bilinear_upsampling_has_atens_gradient(shape):
    """The channels-last backward of ``network.Upsample`` (strided adds, no NCHW copy) gives ATen's gradient, for
    odd sizes and single rows too, and for a channel slice of a channels-last gradient (a skip's concatenation)."""
    from dip_compile.network import Upsample

    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    up = Upsample(scale_factor=2, mode="bilinear", align_corners=False)
    y = up(x)
    assert y.grad_fn is not None and "BilinearX2" in type(y.grad_fn).__name__  # the channels-last path ran
    wide = torch.randn(shape[0], shape[1] + 3, 2 * shape[2], 2 * shape[3]).contiguous(memory_format=torch.channels_last)
    g = wide[:, 3:]  # channels innermost, not contiguous
    (ours,) = torch.autograd.grad(y, x, g)
    expected = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    (aten,) = torch.autograd.grad(expected, x, g)
    assert torch.equal(y, expected)
    assert ours.shape == x.shape and torch.allclose(ours, aten, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, torch.zeros_like(ours))


def test_upsampling_is_atens_where_the_layout_is_nchw_or_corners_are_aligned():
    """The fp32 CPU step (NCHW), ``--align-corners`` and export (no gradient) run ATen's upsampling unchanged."""
    from dip_compile.network import Upsample

    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    for module, inp in (
        (Upsample(scale_factor=2, mode="bilinear", align_corners=False), x),
        (
            Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            x.contiguous(memory_format=torch.channels_last),
        ),
    ):
        y = module(inp)
        assert "UpsampleBilinear2D" in type(y.grad_fn).__name__
    with torch.no_grad():
        assert (
            Upsample(scale_factor=2, mode="bilinear")(x.contiguous(memory_format=torch.channels_last)).grad_fn is None
        )


def small_paper_net() -> tuple[nn.Module, torch.Tensor]:
    cfg = NetConfig(input_depth=4, channels_down=(8, 8, 8), channels_up=(8, 8, 8), channels_skip=(2, 2, 2))
    torch.manual_seed(0)
    net = build_network(cfg).to(memory_format=torch.channels_last)
    return net, torch.rand(1, 4, 32, 32).contiguous(memory_format=torch.channels_last)


def test_a_split_merge_is_the_concatenated_merge_in_fp32():
    """``PaperLevel._merge_split`` (BatchNorm and the conv on the skip's and the upsampled channels apart, summed)
    computes what the concatenation computes: the same parameters, fp32 rounding apart."""
    net, x = small_paper_net()
    level = net.body
    y, s = level.deeper(level.down(x)), level.skip(x)
    joined = level.up[0](level._merge(s, y))
    assert torch.allclose(level._merge_split(s, y), joined, atol=1e-5)


def test_bf16_cpu_training_steps_split_the_merge_and_keep_the_gradients():
    """Only bf16 CPU training (channels-last under autocast) merges apart; its gradients stay as close to the
    concatenated merge's as bf16 rounding leaves them. NCHW fp32 (the golden fit), no-grad and export concatenate."""
    from dip_compile import network

    net, x = small_paper_net()
    y = torch.rand(1, 8, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    s = torch.rand(1, 2, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert network.split_merge(s, y)
        assert not network.split_merge(s.contiguous(), y.contiguous())  # NCHW
        assert not network.split_merge(s.detach(), y.detach())  # (as inside torch.func's transforms: packed steps)
        with torch.no_grad():
            assert not network.split_merge(s, y)
    assert not network.split_merge(s, y)  # fp32: no autocast

    def gradients(split: bool) -> torch.Tensor:
        model = copy.deepcopy(net)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(network, "split_merge", lambda s, y: split)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
        out.float().square().mean().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    split, joined = gradients(True), gradients(False)
    assert (split - joined).norm() < 0.2 * joined.norm()

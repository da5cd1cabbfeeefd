import dataclasses

import pytest
import torch

from conftest import ONCE, TINY_NET, smooth_image, tiny_config
from dip_compile.degradations import random_holes_mask
from dip_compile.fitting import Fitter, StepRequest
from dip_compile.metrics import psnr
from dip_compile.packing import PackedStep, drive_packed, pack_key
from dip_compile.problem import add_noise, make_problem


def fitters(cfg_changes: list[dict], task: str = "denoise") -> list[Fitter]:
    made = []
    for i, changes in enumerate(cfg_changes):
        changes = dict(changes)
        net = changes.pop("net", None)
        cfg = tiny_config(task, **{"iterations": 12, "stop": "fixed", "log_every": 4, "seed": i, **changes})
        cfg = cfg.replace(net=net) if net is not None else cfg
        clean = smooth_image(32, 32, seed=i)
        if task == "inpaint":
            problem = make_problem(cfg, clean, mask=random_holes_mask(32, 32, 0.5, seed=i), reference=clean)
        else:
            problem = make_problem(cfg, add_noise(clean, 0.1, seed=i), reference=clean)
        made.append(Fitter(cfg, problem))
    return made


@pytest.mark.parametrize("task", ["denoise", "inpaint"])
def test_a_packed_step_computes_each_fits_own_loss_output_and_gradients(task):
    changes = [{"backend": "eager", "precision": "fp32"}, {"lr": 0.02}, {"reg_noise_std": 0.0}]
    alone, packed = fitters(changes, task), fitters(changes, task)
    replies = PackedStep()([StepRequest(f, f.net_input) for f in packed])
    for a, p, (loss, out) in zip(alone, packed, replies, strict=True):
        own_loss, own_out = a.step(a.net_input, a.optimizer)
        assert torch.allclose(loss, own_loss, rtol=1e-5) and (out - own_out).abs().max() < 1e-5
        for pa, pp in zip(a.net.parameters(), p.net.parameters(), strict=True):
            assert torch.allclose(pp.grad, pa.grad, rtol=1e-3, atol=1e-6)
    assert (replies[0][1] - replies[1][1]).abs().max() > 1e-2  # the fits differ: packing kept them apart


def test_packed_fits_restore_as_well_as_alone_and_stop_on_their_own():
    """Grouped convolutions round differently from single ones, and Adam amplifies rounding (the biases of convs
    before BatchNorm have a zero gradient up to rounding, so their first steps are +-lr at random): long packed fits
    are not bit-identical to fits alone, but restore as well."""
    changes = [
        {"iterations": 100, "ema": None},
        {"iterations": 100, "ema": None, "lr": 0.02},
        {"iterations": 60, "ema": None},
    ]
    alone = [f.run() for f in fitters(changes)]
    packed_fitters = fitters(changes)
    results = drive_packed(iter(f.session() for f in packed_fitters), pack=3)
    assert sorted(r.iterations for r in results) == [60, 100, 100]
    for f, a in zip(packed_fitters, alone, strict=True):
        ref = f.problem.reference.cpu()
        gain = psnr(f.image()[0].cpu(), ref) - psnr(f.problem.observation.cpu(), ref)
        assert gain > 3.0
        assert abs(psnr(f.image()[0].cpu(), ref) - psnr(a.image, ref)) < 1.0  # tiny fits vary this much by seed


def test_packs_group_fits_of_equal_networks_and_canvas():
    a, b = fitters([{}, {}])
    (c,) = fitters([{"iterations": 3}])
    assert pack_key(a) == pack_key(b) == pack_key(c)
    other = Fitter(tiny_config("denoise", stop="fixed"), make_problem(tiny_config("denoise"), smooth_image(64, 64)))
    assert pack_key(other) != pack_key(a)


def test_a_pack_of_mixed_sizes_runs_each_group_on_its_own():
    small = fitters([{}, {}])
    big_cfg = tiny_config("denoise", iterations=12, stop="fixed", log_every=4)
    big = Fitter(big_cfg, make_problem(big_cfg, smooth_image(64, 64)))
    alone = Fitter(big_cfg, make_problem(big_cfg, smooth_image(64, 64))).run().image
    drive_packed(iter([small[0].session(), big.session(), small[1].session()]), pack=3)
    assert torch.equal(big.image()[0].cpu(), alone)  # a group of one runs the fit's own step
    assert all(f.iteration == 12 for f in [*small, big])


@ONCE
def test_a_compiled_packed_step_matches_the_eager_step_alone():
    """One torch.compile test (about a minute): the packed step under inductor and bf16 autocast."""
    net = dataclasses.replace(TINY_NET, channels_down=(8, 8), channels_up=(8, 8), channels_skip=(4, 4))
    changes = [
        {"backend": "inductor", "precision": "bf16", "net": net},
        {"backend": "inductor", "precision": "bf16", "net": net, "lr": 0.02},
    ]
    packed = fitters(changes)
    alone = fitters([{**c, "backend": "eager"} for c in changes])
    assert packed[0].plan.backend == "inductor"
    replies = PackedStep()([StepRequest(f, f.net_input) for f in packed])
    for a, (loss, out) in zip(alone, replies, strict=True):
        own_loss, own_out = a.step(a.net_input, a.optimizer)
        tolerance = 1e-5 if a.plan.precision == "fp32" else 2e-2  # bf16 rounds the network's activations
        assert abs(loss.item() - own_loss.item()) <= tolerance * own_loss.item()
        assert (out - own_out).abs().max() < tolerance
    results = drive_packed(iter(f.session(3) for f in packed), pack=2)
    assert [r.iterations for r in results] == [3, 3] and all(torch.isfinite(r.image).all() for r in results)


def test_a_non_finite_fit_in_a_bf16_pack_falls_back_alone():
    """Each packed fit keeps its own NaN guard: the poisoned one skips its steps and goes on in fp32 (its key
    changes, so it leaves the pack); its partner never sees a NaN."""
    healthy, poisoned = fitters([{"precision": "bf16", "iterations": 8}, {"precision": "bf16", "iterations": 8}])
    original = poisoned.perturbed_input

    def nan_input_from_iteration_2():
        x = original()
        return x * float("nan") if poisoned.iteration == 2 else x

    poisoned.perturbed_input = nan_input_from_iteration_2  # type: ignore[method-assign]
    drive_packed(iter([healthy.session(), poisoned.session()]), pack=2)
    assert healthy.fallbacks == [] and torch.isfinite(healthy.image()[0]).all()
    assert poisoned.fallbacks and poisoned.fallbacks[0]["from_plan"].startswith("eager bf16")
    assert poisoned.plan.precision == "fp32" and torch.isfinite(poisoned.image()[0]).all()


def test_save_memory_fits_run_alone_in_a_pack_with_the_results_they_have_alone():
    changes = [{"backend": "eager", "precision": "fp32", "save_memory": True}] * 2
    packed, alone = fitters(changes), fitters(changes)
    results = drive_packed(iter([f.session() for f in packed]), 2)
    for a, r in zip(alone, results, strict=True):
        assert torch.equal(r.image, a.run().image)

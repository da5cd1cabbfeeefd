"""Properties every registry entry must have, parametrized over the registries themselves: a new task, loss, noise
model or kernel family is tested by adding it (and, for noise and kernels, one valid argument below)."""

from __future__ import annotations

import ast
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_NET, smooth_image
from dip_compile import exporters, presets
from dip_compile.checkpoint import load_checkpoint, save_checkpoint
from dip_compile.config import Backend, Choice, FitConfig, InputKind, Loss, Precision, Task
from dip_compile.degradations import OPERATORS, adjoint, make_operator
from dip_compile.fitting import Fitter
from dip_compile.kernels import KINDS, parse_kernel
from dip_compile.losses import LOSSES, make_loss
from dip_compile.noise import MODELS, NoiseError, parse_noise
from dip_compile.problem import make_problem
from dip_compile.stopping import HeldOutLoss
from dip_compile.tasks import TASKS, TaskError, TaskSpec, spec

PACKAGE = Path(__file__).resolve().parent.parent / "dip_compile"
SIZE = (16, 24)  # the restored image: a multiple of every factor, and the tiny net's smallest canvas
CASES = [pytest.param(name, f, id=f"{name}-x{f}") for name, s in TASKS.items() for f in (s.factors or (1,))]
NOISE_VALUES = {"gaussian": 25.0, "poisson": 30.0, "impulse": 0.2}  # one valid argument per noise model
KERNEL_ARGS = {"gaussian": "1", "motion": "5,30", "box": "3"}  # one valid spec argument per kernel family


def task_inputs(task: TaskSpec) -> dict[str, torch.Tensor | None]:
    """The mask and the kernel the task needs (None for the ones it does not)."""
    g = torch.Generator().manual_seed(1)
    kernel = torch.rand(3, 5, generator=g)
    return {
        "mask": (torch.rand(SIZE, generator=g) > 0.3).float() if task.needs("mask") else None,
        "kernel": kernel / kernel.sum() if task.needs("kernel") else None,
    }


def low(factor: int) -> tuple[int, int]:
    return (SIZE[0] // factor, SIZE[1] // factor)


def test_the_registries_cover_the_enums_and_name_what_exists() -> None:
    assert tuple(TASKS) == Task.values()
    assert set(LOSSES) == set(Loss.values())
    assert set(NOISE_VALUES) == set(MODELS) and set(KERNEL_ARGS) == set(KINDS)
    for name, task in TASKS.items():
        assert task.name == name and task.operator in OPERATORS
        assert presets.get(task.default_preset, name).task == name  # its default preset is one of its own


def test_no_module_compares_the_task_with_a_name_so_a_new_task_is_registry_entries() -> None:
    """What tells tasks apart is a TaskSpec field: ``task == "inpaint"`` anywhere would be one more file that a new
    task has to edit (config.Task, tasks.TASKS and presets.PRESETS name the tasks; they compare none)."""
    found = []
    for path in sorted((Path(__file__).resolve().parent.parent / "dip_compile").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare):
                for sub in ast.walk(node):
                    named = isinstance(sub, ast.Constant) and sub.value in Task.values()
                    member = isinstance(sub, ast.Attribute) and sub.attr in Task.__members__
                    if named or member:
                        found.append(f"{path.name}:{node.lineno}")
    assert not found, f"task names compared in {', '.join(found)}: add a TaskSpec field instead"


# The choices whose behaviour is declared on their Enum (config.py): the names a value of each is held under, so that
# a comparison with its string (``precision == "fp32"``, ``input_kind in ("image",)``) is found as well as one with a
# member (``== Precision.fp32``). What a module needs to know is a property of the Enum (``precision.reduced``,
# ``input_kind.guided``) or a registry keyed by its members (``network.INPUTS``, ``acceleration.DTYPES``).
CHOICES: dict[type[Choice], tuple[str, ...]] = {
    InputKind: ("input_kind", "input"),
    Precision: ("precision",),
    Backend: ("backend",),
}


def held_under(node: ast.AST) -> str | None:
    """The name an operand reads (``x``, ``a.x`` or ``str(a.x)``: x), None for anything else."""
    if isinstance(node, ast.Call) and len(node.args) == 1:
        node = node.args[0]
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def choice_comparisons(kind: type[Choice], names: tuple[str, ...], folder: Path = PACKAGE) -> list[str]:
    """Where a module under ``folder`` compares a value of ``kind`` (outside the Enum's own class)."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        own = {
            id(n)
            for c in ast.walk(tree)
            if isinstance(c, ast.ClassDef) and c.name == kind.__name__
            for n in ast.walk(c)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare) or id(node) in own:
                continue
            inside = list(ast.walk(node))
            member = any(
                isinstance(sub, ast.Attribute)
                and isinstance(sub.value, ast.Name)
                and sub.value.id == kind.__name__
                and sub.attr in kind.__members__
                for sub in inside
            )
            value = any(isinstance(sub, ast.Constant) and sub.value in kind.values() for sub in inside)
            held = any(held_under(operand) in names for operand in (node.left, *node.comparators))
            if member or (value and held):
                found.append(f"{path.name}:{node.lineno}")
    return found


@pytest.mark.parametrize("kind", CHOICES, ids=lambda kind: kind.__name__)
def test_no_module_compares_a_choice_so_its_behaviour_is_declared_once(kind: type[Choice]) -> None:
    """A new value of one of these choices is its member and what its properties say of it: a comparison elsewhere
    would be one more file for it to edit (and the string form would not notice a renamed member)."""
    found = choice_comparisons(kind, CHOICES[kind])
    assert not found, f"{kind.__name__} compared in {', '.join(found)}: give the Enum a property instead"


def test_the_choice_rule_finds_comparisons_with_a_string_or_a_member(tmp_path: Path) -> None:
    (tmp_path / "module.py").write_text(
        'a = plan.precision == "fp32"\n'
        'b = str(config.precision) in ("bf16", "fp16")\n'
        "c = cfg.input_kind != InputKind.noise\n"
        'd = device == "cpu" or options.noise == "seed"\n'
        "e = precision.reduced\n"
    )
    assert choice_comparisons(Precision, CHOICES[Precision], tmp_path) == ["module.py:1", "module.py:2"]
    assert choice_comparisons(InputKind, CHOICES[InputKind], tmp_path) == ["module.py:3"]


def test_a_new_task_spec_is_a_new_task_choice_with_no_other_declaration() -> None:
    """``config.Task`` is read from ``tasks.TASKS``: a registry entry added before config is imported is a choice of
    the CLI's TASK, with its member name (a fresh interpreter, so the suite's registry stays as it is)."""
    code = (
        "from dip_compile import tasks\n"
        "tasks.TASKS['sharpen-more'] = tasks.TaskSpec('sharpen-more', 'identity', 'f16')\n"
        "from dip_compile.config import Task\n"
        "print(Task('sharpen-more').name, Task.values()[-1])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent
    ).stdout
    assert out.split() == ["sharpen_more", "sharpen-more"]


def test_an_unknown_task_or_input_is_a_one_line_error() -> None:
    with pytest.raises(TaskError, match="unknown task 'sharpen'"):
        spec("sharpen")
    with pytest.raises(TaskError, match="unknown input"):
        TaskSpec("x", "identity", "f16", inputs=frozenset({"depth map"}))


@pytest.mark.parametrize("name, factor", CASES)
def test_each_operator_maps_the_image_onto_the_observations_shape(name: str, factor: int) -> None:
    operator = make_operator(name, factor=factor, channels=3, **task_inputs(TASKS[name]))
    assert operator(torch.rand(1, 3, *SIZE)).shape == (1, 3, *low(factor))


@pytest.mark.parametrize("name, factor", CASES)
def test_each_operator_is_linear_and_its_adjoint_satisfies_the_dot_product_test(name: str, factor: int) -> None:
    """<A x, y> = <x, A^T y>. The adjoint is the vector-Jacobian product at zero, which is A^T exactly when A is
    linear: the linearity check is what makes the dot-product test more than a tautology."""
    operator = make_operator(name, factor=factor, channels=3, **task_inputs(TASKS[name])).double()
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.rand(1, 3, *SIZE, generator=g, dtype=torch.float64) for _ in range(2))
    y = torch.rand(1, 3, *low(factor), generator=g, dtype=torch.float64)
    torch.testing.assert_close(operator(2 * x1 - 3 * x2), 2 * operator(x1) - 3 * operator(x2))
    back = adjoint(operator, y, SIZE)
    assert back.shape == x1.shape
    assert math.isclose(float((operator(x1) * y).sum()), float((x1 * back).sum()), rel_tol=1e-10)


def tiny_task_config(name: str, factor: int) -> FitConfig:
    base = presets.preset(name, factor=factor if TASKS[name].scales else None)
    net = dataclasses.replace(
        TINY_NET, upsample=base.net.upsample[:1], input_kind=base.net.input_kind, input_depth=base.net.input_depth
    )
    return base.replace(net=net, iterations=2, log_every=1, stop="fixed")


@pytest.mark.parametrize("name", TASKS)
def test_each_task_fits_checkpoints_and_exports_the_image_it_fitted(name: str, tmp_path) -> None:
    task = TASKS[name]
    factor = task.factors[0] if task.scales else 1
    config = tiny_task_config(name, factor)
    clean = smooth_image(*SIZE)
    guide = smooth_image(*SIZE, seed=2) if task.needs("guide") else None
    observation = clean[:, : low(factor)[0], : low(factor)[1]]
    problem = make_problem(config, observation, guide=guide, **task_inputs(task))
    assert problem.size == SIZE and problem.observation.shape[-2:] == low(factor)
    fitter = Fitter(config, problem)
    fitter.run(config.iterations)
    save_checkpoint(fitter, tmp_path / "fit.ckpt")
    loaded = load_checkpoint(tmp_path / "fit.ckpt")
    assert loaded.problem.task == name and torch.equal(loaded.problem.observation, problem.observation)
    # TorchScript: the quickest format to write and replay (test_exporters covers the formats themselves)
    path = exporters.write_torch(exporters.plan_export(loaded, image="output"), tmp_path / "fit.pt", "torchscript")
    check = exporters.agreement(exporters.run_torchscript(path), fitter.output())
    assert exporters.passes(check), check


@pytest.mark.parametrize("name", TASKS)
def test_each_task_holds_out_observed_pixels_and_finishes_on_all_of_them(name: str) -> None:
    task = TASKS[name]
    factor = task.factors[0] if task.scales else 1
    config = tiny_task_config(name, factor).replace(stop="holdout", stop_holdout=0.2, stop_finish=3, iterations=6)
    guide = smooth_image(*SIZE, seed=2) if task.needs("guide") else None
    observation = smooth_image(*SIZE)[:, : low(factor)[0], : low(factor)[1]]
    problem = make_problem(config, observation, guide=guide, **task_inputs(task))
    fitter = Fitter(config, problem)
    held = fitter.stopper.held  # over the observation: the low-resolution pixels of a scaling task
    assert held.shape[-2:] == low(factor) and 0 < int(held.sum()) < math.prod(low(factor))
    assert torch.equal(fitter.problem.fidelity.weight, 1 - held)
    result = fitter.run()
    assert result.stop_info["finished_from"] == 3 and torch.all(fitter.problem.fidelity.weight == 1)


@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_counts_nothing_at_a_held_out_pixel(name: str) -> None:
    y = smooth_image(8, 8)[None]
    weight = (torch.arange(64).reshape(1, 1, 8, 8) % 3 != 0).float()
    loss = HeldOutLoss(make_loss(name, peak=20.0 if name == "poisson" else None), weight)
    x = (y * 0.9 + 0.05).requires_grad_(True)
    at = loss(x, y)
    assert torch.equal(loss(x, y + (1 - weight) * 0.3), at)  # the observation there does not matter
    (grad,) = torch.autograd.grad(at, x)
    assert torch.all(grad[(weight == 0).expand_as(grad)] == 0) and torch.all(grad[(weight == 1).expand_as(grad)] != 0)


@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_is_smallest_where_the_prediction_meets_the_observation(name: str) -> None:
    loss = make_loss(name, peak=20.0 if name == "poisson" else None)
    y = smooth_image(8, 8)[None]
    x = y.clone().requires_grad_(True)
    at = loss(x, y)
    (grad,) = torch.autograd.grad(at, x)
    assert at.dim() == 0 and torch.isfinite(grad).all()
    assert at < loss(y * 1.1, y) and at < loss(y * 0.9, y)


@pytest.mark.parametrize("kind", MODELS)
def test_each_noise_model_is_seeded_keeps_the_range_and_refuses_values_out_of_it(kind: str) -> None:
    noise = parse_noise(f"{kind}:{NOISE_VALUES[kind]:g}")
    image = smooth_image(16, 16)
    noisy = noise.apply(image, seed=3)
    assert noisy.shape == image.shape and 0 <= noisy.min() and noisy.max() <= 1
    assert not torch.equal(noisy, image)
    assert torch.equal(noisy, noise.apply(image, seed=3)) and not torch.equal(noisy, noise.apply(image, seed=4))
    for bad in (0, 1e7):
        with pytest.raises(NoiseError, match=f"{kind}:{MODELS[kind].arg} needs"):
            parse_noise(f"{kind}:{bad:g}")


@pytest.mark.parametrize("kind", KINDS)
def test_each_kernel_family_makes_a_normalised_kernel_and_refuses_the_wrong_arity(kind: str) -> None:
    kernel = parse_kernel(f"{kind}:{KERNEL_ARGS[kind]}")
    assert kernel.ndim == 2 and (kernel >= 0).all() and math.isclose(kernel.sum(), 1.0)
    with pytest.raises(ValueError, match="does not parse"):
        parse_kernel(f"{kind}:{KERNEL_ARGS[kind]},1")

import errno
import io

import pytest
import torch

from conftest import smooth_image, tiny_config
from dip_compile import checkpoint
from dip_compile.checkpoint import load_checkpoint, save_checkpoint
from dip_compile.errors import DipError
from dip_compile.fitting import Fitter
from dip_compile.problem import make_problem


@pytest.fixture
def checkpoint_file(tmp_path):
    cfg = tiny_config("inpaint", iterations=2)
    mask = torch.ones(32, 32)
    mask[10:20, 10:20] = 0
    fitter = Fitter(cfg, make_problem(cfg, smooth_image(32, 32), mask=mask))
    fitter.run()
    return save_checkpoint(fitter, tmp_path / "a.ckpt"), fitter


def test_checkpoint_holds_problem_config_and_state(checkpoint_file):
    path, fitter = checkpoint_file
    ckpt = load_checkpoint(path)
    assert ckpt.config == fitter.config and ckpt.iteration == 2
    assert torch.equal(ckpt.problem.mask, fitter.problem.mask)
    assert torch.equal(ckpt.fitter().output(), fitter.output())


def test_truncated_checkpoint_is_a_user_error(checkpoint_file, tmp_path):
    path, _ = checkpoint_file
    data = path.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DipError, match="not a readable"):
        load_checkpoint(tmp_path / "cut.ckpt")


def test_checkpoint_with_damaged_contents_is_a_user_error(tmp_path):
    torch.save({"format": "dip-compile-checkpoint", "version": 1, "config": {"net": {}}}, tmp_path / "d.ckpt")
    with pytest.raises(DipError, match="damaged"):
        load_checkpoint(tmp_path / "d.ckpt")


def test_a_full_disk_while_saving_a_checkpoint_is_a_one_line_error_and_keeps_the_old_file(
    checkpoint_file, monkeypatch, tmp_path
):
    path, fitter = checkpoint_file
    before = path.read_bytes()

    class FullDisk(io.FileIO):
        written = 0

        def write(self, data):
            FullDisk.written += len(data)
            if FullDisk.written > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    monkeypatch.setattr(checkpoint, "open", lambda p, mode: FullDisk(p, mode), raising=False)
    with pytest.raises(DipError, match="no space left"):
        save_checkpoint(fitter, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]


def test_a_checkpoint_with_wrong_shapes_is_refused(checkpoint_file, tmp_path):
    path, _ = checkpoint_file
    payload = torch.load(path, weights_only=True)
    payload["state"]["net_input"] = torch.zeros(1, 8, 16, 16)
    torch.save(payload, tmp_path / "bad.ckpt")
    with pytest.raises(DipError, match="damaged.*network input has shape"):
        load_checkpoint(tmp_path / "bad.ckpt")

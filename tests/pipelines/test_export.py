"""Release checkpoints: smaller than the training checkpoints, loadable with weights_only, same outputs."""
from __future__ import annotations

import torch

from data.checkpoint import load_checkpoint
from anonymizer.stage1.trainer import load_optics_checkpoint
from optics.lens import Lens, load_lens_config
from pipelines.export import export_optics


def test_lens_state_holds_only_learnable_parameters():
    lens = Lens(load_lens_config("face-deid", psf_size=128))
    assert set(lens.state_dict()) == {name for name, _ in lens.named_parameters()}


def test_export_optics_round_trip(tmp_path):
    from anonymizer.stage1.heatmap import HeatmapRegressor
    from data.checkpoint import save_checkpoint

    cfg = load_lens_config("face-deid", psf_size=128)
    lens = Lens(cfg)
    with torch.no_grad():
        lens.zernike_coeffs.add_(torch.linspace(-1e-7, 1e-7, lens.zernike_coeffs.numel()))
    reg_cfg = {"in_channels": 3, "out_channels": 2, "base": 4, "depth": 2}
    reg = HeatmapRegressor(**reg_cfg)
    full = tmp_path / "000010_optics.ckpt"
    save_checkpoint(full, {"step": 10, "args": {}, "lens_config": cfg.to_dict(), "lens": lens.state_dict(),
                           "regressor_config": reg_cfg, "regressor": reg.state_dict(),
                           "heatmap": {"mode": "grouped", "sigma": 2.0, "num_channels": 2, "img_size": 64},
                           "optims": {"big": torch.zeros(100000)}, "rng": {"torch": torch.get_rng_state()}})
    small = export_optics(full, tmp_path / "release.ckpt")
    assert small.stat().st_size < full.stat().st_size
    state = load_checkpoint(small)
    assert "optims" not in state and "rng" not in state
    a, ra, _ = load_optics_checkpoint(full)
    b, rb, _ = load_optics_checkpoint(small)
    assert torch.equal(a.psf(), b.psf())
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(ra(x), rb(x))


def test_lens_loads_legacy_state_with_config_derived_buffers():
    """Checkpoints written before the buffers became non-persistent hold them too: strict loading still works."""
    cfg = load_lens_config("face-deid", psf_size=128)
    lens = Lens(cfg)
    with torch.no_grad():
        lens.zernike_coeffs.fill_(5e-8)
    legacy = {**lens.state_dict(), "basis": lens.basis.clone(), "aperture": lens.aperture.clone()}
    other = Lens(cfg)
    other.load_state_dict(legacy)  # strict: unexpected keys would raise
    assert torch.equal(other.zernike_coeffs, lens.zernike_coeffs)
    bogus = {**lens.state_dict(), "not_a_buffer": torch.zeros(1)}
    try:
        other.load_state_dict(bogus)
    except RuntimeError as err:
        assert "not_a_buffer" in str(err)
    else:
        raise AssertionError("an unknown key must still be rejected")

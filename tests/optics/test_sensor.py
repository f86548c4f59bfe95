from __future__ import annotations

import pytest
import torch

from optics.sensor import Sensor, SensorConfig, poisson_gaussian_noise, quantize_ste


@pytest.mark.parametrize("exact", [False, True])
def test_noise_mean_and_variance_in_electrons(exact):
    g = torch.Generator().manual_seed(0)
    mu, read = 400.0, 6.0
    e = poisson_gaussian_noise(torch.full((400_000,), mu, dtype=torch.float64), read, g, exact=exact)
    assert float(e.mean()) == pytest.approx(mu, abs=4 * ((mu + read ** 2) / 4e5) ** 0.5)
    assert float(e.var()) == pytest.approx(mu + read ** 2, rel=0.02)


def test_noise_is_reparameterised_differentiable_in_mean():
    def f(mu):
        return poisson_gaussian_noise(mu, 3.0, torch.Generator().manual_seed(5))

    mu = torch.tensor([10.0, 100.0, 1000.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (mu,))
    # exact Poisson: straight-through gradient of 1 w.r.t. the mean
    mu2 = mu.detach().clone().requires_grad_(True)
    poisson_gaussian_noise(mu2, 3.0, torch.Generator().manual_seed(5), exact=True).sum().backward()
    assert torch.allclose(mu2.grad, torch.ones(3, dtype=torch.float64))


def test_adc_quantisation_levels_and_straight_through_gradient():
    x = torch.tensor([-0.2, 0.0, 0.1, 0.5, 0.999, 1.0, 1.3], dtype=torch.float64, requires_grad=True)
    q = quantize_ste(x, 3)
    assert torch.allclose(q, torch.tensor([0, 0, 1 / 7, 4 / 7, 1, 1, 1], dtype=torch.float64))
    q.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0, 1, 1, 1, 1, 1, 0], dtype=torch.float64))


def test_full_well_saturation_and_scale():
    cfg = SensorConfig(photons_at_white=1000.0, qe=0.5, full_well=250.0, read_noise=0.0, bit_depth=None)
    s = Sensor(cfg)
    x = torch.tensor([0.0, 0.2, 0.5, 0.8, 1.0]).reshape(1, 1, 1, 5)
    out = s(x, noise=False)
    # 500 e- at white; full well 250 e- clips at 0.5 of the ADC range
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 0.2, 0.5, 0.5, 0.5]))


def test_sensor_noise_level_matches_config():
    cfg = SensorConfig(photons_at_white=10000.0, qe=1.0, full_well=1e6, read_noise=10.0, bit_depth=None)
    x = torch.full((1, 1, 300, 300), 0.25, dtype=torch.float64)
    out = Sensor(cfg)(x, generator=torch.Generator().manual_seed(1))
    expected_std = (2500 + 100) ** 0.5 / 10000
    assert float(out.std()) == pytest.approx(expected_std, rel=0.02)
    assert float(out.mean()) == pytest.approx(0.25, abs=3 * expected_std / 300)


def test_bad_sensor_config_names_key():
    with pytest.raises(ValueError, match="qe"):
        SensorConfig(qe=1.5)
    with pytest.raises(ValueError, match="bit_depth"):
        SensorConfig(bit_depth=0)


@pytest.mark.parametrize("cfg", [SensorConfig(), SensorConfig(bit_depth=None, full_well=8000.0),
                                 SensorConfig(read_noise=0.0, bit_depth=4)], ids=["8bit", "float-fullwell", "noread"])
def test_fused_noisy_capture_equals_the_op_by_op_chain(cfg, device, dtype):
    # the sensor's one-pass autograd function against the documented chain written op by op, same noise draw
    def chain(x, gen):
        e = poisson_gaussian_noise(x * cfg.electrons_at_white, cfg.read_noise, gen)
        y = torch.clamp(e, 0.0, cfg.full_well) / cfg.electrons_at_white
        return y.clamp(0, 1) if cfg.bit_depth is None else quantize_ste(y, cfg.bit_depth)

    g = torch.Generator().manual_seed(2)
    x = (torch.rand(2, 3, 24, 24, generator=g, dtype=torch.float64) * 1.4 - 0.2).to(dtype).requires_grad_(True)
    w = torch.rand(2, 3, 24, 24, generator=g, dtype=torch.float64).to(dtype)
    fused = Sensor(cfg)(x, generator=torch.Generator().manual_seed(9))
    ref = chain(x, torch.Generator().manual_seed(9))
    assert fused.dtype == dtype
    eps = torch.finfo(dtype).eps
    assert torch.allclose(fused, ref, atol=8 * eps)
    ga, = torch.autograd.grad((fused * w).sum(), x)
    gb, = torch.autograd.grad((ref * w).sum(), x)
    assert torch.allclose(ga, gb, atol=64 * eps) and float(ga.abs().sum()) > 0
    # on the device: values stay on it and in range
    out = Sensor(cfg)(x.detach().to(device))
    assert out.device.type == device.type and out.dtype == dtype and float(out.min()) >= 0 and float(out.max()) <= 1


def test_fused_gaussian_capture_mean_and_variance_per_photon_level():
    # the fused sensor's shot + read noise at four photon levels (no ADC, no clipping within 9 sigma): mean x and
    # variance (x E + r^2) / E^2, E = 10000 e- at white; 2^20 pixels, so the draw takes the chunked parallel path
    cfg = SensorConfig(photons_at_white=20000.0, qe=0.5, full_well=20000.0, read_noise=5.0, bit_depth=None)
    levels = torch.tensor([0.01, 0.1, 0.5, 0.9])
    x = levels.view(4, 1, 1, 1).expand(4, 1, 512, 512).contiguous()
    out = Sensor(cfg)(x, generator=torch.Generator().manual_seed(3))
    white = cfg.electrons_at_white
    for i, lv in enumerate(levels.tolist()):
        var = (lv * white + cfg.read_noise ** 2) / white ** 2
        v = out[i].double()
        assert float(v.mean()) == pytest.approx(lv, abs=4 * (var / v.numel()) ** 0.5)
        assert float(v.var()) == pytest.approx(var, rel=0.015)


def test_standard_normal_is_thread_count_independent_and_independent_across_chunks():
    from optics.sensor import NOISE_CHUNK, standard_normal

    shape = (4 * NOISE_CHUNK + 1000,)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = standard_normal(shape, torch.Generator().manual_seed(11))
        torch.set_num_threads(2)
        b = standard_normal(shape, torch.Generator().manual_seed(11))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(a, b)
    assert abs(float(a.mean())) < 4 / a.numel() ** 0.5 and float(a.var()) == pytest.approx(1.0, rel=0.01)
    chunks = a[:4 * NOISE_CHUNK].view(4, NOISE_CHUNK).double()
    corr = torch.corrcoef(chunks)
    assert float((corr - torch.eye(4, dtype=torch.float64)).abs().max()) < 5 / NOISE_CHUNK ** 0.5
    assert not torch.equal(a, standard_normal(shape, torch.Generator().manual_seed(12)))
    # small draws are torch.randn itself
    small = standard_normal((3, 5), torch.Generator().manual_seed(4))
    assert torch.equal(small, torch.randn(3, 5, generator=torch.Generator().manual_seed(4)))



@pytest.mark.parametrize("exact", [False, True])
def test_one_noise_generator_per_image_makes_any_split_of_the_batch_draw_the_same(exact):
    """Image b's noise comes from generator b alone: the batch captured at once equals its images captured one
    at a time with the same generators; a wrong number of generators is refused."""
    from optics.sensor import Sensor, SensorConfig, standard_normal

    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sensor = Sensor(SensorConfig(exact_poisson=exact, photons_at_white=200.0))
    gens = lambda: [torch.Generator().manual_seed(100 + b) for b in range(3)]  # noqa: E731
    whole = sensor(x, generator=gens())
    parts = torch.cat([sensor(x[b:b + 1], generator=[g]) for b, g in enumerate(gens())])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole[0], whole[1])  # different generators, different noise
    draws = standard_normal((3, 40), gens())
    assert torch.equal(draws[1], torch.randn(40, generator=torch.Generator().manual_seed(101)))
    with pytest.raises(ValueError, match="one noise generator per item: got 2 generators"):
        sensor(x, generator=gens()[:2])

def test_fused_gaussian_capture_gradcheck_float64():
    # the custom backward (one saved slope) against finite differences, the noise draw held fixed; values kept
    # away from the clipping edges, where the derivative jumps
    cfg = SensorConfig(photons_at_white=400.0, qe=0.5, full_well=200.0, read_noise=2.0, bit_depth=None)
    x = (0.1 + 0.5 * torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    x.requires_grad_(True)
    sensor = Sensor(cfg)

    def capture(v):
        return sensor(v, generator=torch.Generator().manual_seed(8))

    out = capture(x).detach()
    assert 0 < float(out.min()) and float(out.max()) < 1
    assert torch.autograd.gradcheck(capture, (x,))


@pytest.mark.parametrize("cfg", [SensorConfig(), SensorConfig(bit_depth=None, full_well=8000.0)], ids=["8bit", "fullwell"])
def test_fused_clean_capture_equals_the_op_by_op_chain(cfg, dtype):
    # noise=False: full well + ADC in one pass against the documented chain, values and straight-through gradients
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(2, 3, 24, 24, generator=g, dtype=torch.float64) * 1.4 - 0.2).to(dtype).requires_grad_(True)
    w = torch.rand(2, 3, 24, 24, generator=g, dtype=torch.float64).to(dtype)
    y = torch.clamp(x * cfg.electrons_at_white, 0.0, cfg.full_well) / cfg.electrons_at_white
    ref = y.clamp(0, 1) if cfg.bit_depth is None else quantize_ste(y, cfg.bit_depth)
    fused = Sensor(cfg)(x, noise=False)
    assert torch.allclose(fused, ref, atol=8 * torch.finfo(dtype).eps)
    ga, = torch.autograd.grad((fused * w).sum(), x)
    gb, = torch.autograd.grad((ref * w).sum(), x)
    assert torch.allclose(ga, gb, atol=8 * torch.finfo(dtype).eps) and 0 < float((ga != 0).double().mean()) < 1


def test_monochrome_sensor_records_the_response_weighted_sum_in_every_channel():
    """Closed form: a mono pixel integrates the bands, x = sum_c w_c x_c / sum w; noise-free and with the same
    noise draw it equals the colour sensor's capture of that grey image, in every channel."""
    from optics.sensor import MONO_RESPONSE

    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = torch.tensor(MONO_RESPONSE, dtype=torch.float64) / sum(MONO_RESPONSE)
    gray = (x * w[:, None, None]).sum(1, keepdim=True)
    mono = Sensor(SensorConfig(mono_response=MONO_RESPONSE, bit_depth=None))
    colour = Sensor(SensorConfig(bit_depth=None))
    out = mono(x, noise=False)
    assert out.shape == x.shape and torch.allclose(out, gray.expand_as(x), atol=1e-12)
    noisy = mono(x, noise=True, generator=torch.Generator().manual_seed(3))
    ref = colour(gray, noise=True, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(noisy, ref.expand_as(x), atol=1e-12)  # one draw per pixel, not one per channel
    assert float((noisy - out).std()) > 1e-3  # the noise is there


def test_monochrome_sensor_gradient_is_the_band_response():
    from optics.sensor import MONO_RESPONSE

    x = torch.full((1, 3, 4, 4), 0.5, requires_grad=True)
    Sensor(SensorConfig(mono_response=MONO_RESPONSE)).forward(x, noise=False).sum().backward()
    w = torch.tensor(MONO_RESPONSE) / sum(MONO_RESPONSE)
    assert torch.allclose(x.grad[0, :, 0, 0], 3 * w)  # 3 output channels each carry w_c


def test_mono_camera_of_a_grey_scene_is_the_recorded_psf_convolution():
    """Linearity: for a grey scene the mono capture is the scene convolved with the response-weighted PSF,
    which Camera.recorded_psf returns (the PSF a deconvolution attacker needs)."""
    from optics.camera import Camera
    from optics.imaging import fft_convolve
    from optics.sensor import MONO_RESPONSE

    g = torch.Generator().manual_seed(1)
    psf = torch.rand(3, 9, 9, generator=g, dtype=torch.float64)
    cam = Camera(psf, SensorConfig(mono_response=MONO_RESPONSE, bit_depth=None), noise=False).double()
    scene = torch.rand(1, 1, 24, 24, generator=g, dtype=torch.float64).expand(1, 3, 24, 24)
    rec = cam.recorded_psf()
    assert torch.allclose(rec.sum((1, 2)), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(rec[0], rec[2])
    assert torch.allclose(cam(scene), fft_convolve(scene, rec).clamp(0, 1), atol=1e-10)
    colour = Camera(psf, SensorConfig(bit_depth=None), noise=False).double()
    assert torch.equal(colour.recorded_psf(), colour.psf())


def test_sensor_from_state_and_bad_mono_response_are_named():
    from optics.sensor import sensor_config

    assert SensorConfig.from_state({}) == SensorConfig()
    mono = sensor_config("mono")
    assert SensorConfig.from_state({"sensor": mono.to_dict()}) == mono and sensor_config("color", mono) == SensorConfig()
    with pytest.raises(ValueError, match=r"run\.ckpt: unknown sensor keys \['colour'\]"):
        SensorConfig.from_state({"sensor": {"colour": 1}}, "run.ckpt")
    with pytest.raises(ValueError, match="mono_response"):
        SensorConfig(mono_response=[0.5, -1.0, 0.2])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        Sensor(mono)(torch.rand(1, 2, 4, 4))

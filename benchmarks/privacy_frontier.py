"""The privacy / utility frontier: landmark NME of a Stage I regressor (x) against re-identification after the
strongest attack (y), for every camera, measured side by side in one run on held-out people.

Protocol (the threat model of the README: the attacker owns the camera / knows its PSF, has public faces and
compute, and steals raw captures after noise and ADC):

* Faces: the embedded NBA set at ``--img_size`` (one photo per person), its deterministic train / val split.
  The attacker's faces are the whole training split; the victims are the held-out (val) people.
* Utility: a HeatmapRegressor (68 per-landmark heatmaps, the Stage II input) trained on the camera's captures of
  the training split for ``--stage1_steps`` steps (jointly with the lens for trained lenses, the optics frozen
  otherwise), NME on the val captures against the dlib teacher on the clean faces (outer-eye-corner distance).
* Attacks on the val captures: none (the raw capture), Wiener and Richardson-Lucy with the true PSF (cameras with
  a PSF), and the learned inverter (metrics.inverter.train_camera_inverter: a U-Net trained for
  ``--inverter_iters`` steps on fresh, augmented captures of the attacker's faces through the same camera, L1 +
  identity-band loss, cosine-decayed).
* Re-identification: dlib ResNet embeddings; probe = the attacked capture of person i, aligned with the clean
  photo's own dlib landmarks (an upper bound on the attacker's alignment); gallery = the clean photos of all
  held-out people (chance 1/N) and, the large gallery, held-out + every training face as distractors. For a
  monochrome camera (``+mono``) every attack is also scored against the galleries greyed with the sensor's band
  response (an attacker who knows the sensor compares grey with grey). y = the
  largest held-out rank-1 over the attacks ("after the strongest attack"); rank-5 and the large gallery are in
  the table too.

Cameras (every one with the same sensor: Poisson-Gaussian noise, 8-bit ADC): low resolution 8/12/16 (area down,
bicubic up), Gaussian blur sigma 2/4/8 px and pixelation 4/8/16 px (at a 128 px face crop; scaled with
``--img_size``), the face-deid preset (fixed), the frequency-band lens (the face-deid lens trained with the
identity-band power term, ``--lambda_adv 0``), adversarial lenses trained here at several ``--adv_weights``
(quantisation-aware, 16 levels), and any Stage I checkpoints given with ``--lens_checkpoints`` (their lens
frozen, a fresh regressor trained with the same budget).

    python benchmarks/privacy_frontier.py                                   # full budget
    python benchmarks/privacy_frontier.py --img_size 64 --stage1_steps 200 --inverter_iters 600   # 2 CPU cores
    python benchmarks/privacy_frontier.py --cameras lowres16 --lens_checkpoints checkpoints/stage1_optics.ckpt \
        --img_size 128 --out results/shipped_vs_lowres

Writes ``<out>/privacy_frontier.json`` / ``.md`` and the figure ``--figure`` (default docs/frontier.png).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anonymizer.stage1.trainer import FaceLandmarkSet, Stage1Config, Stage1Trainer  # noqa: E402
from data.files import save_figure, save_json, save_text  # noqa: E402
from metrics.attacks import gaussian_psf, richardson_lucy_attack, wiener_attack  # noqa: E402
from metrics.inverter import capture_with, invert, train_camera_inverter  # noqa: E402
from optics.binning import REFERENCE_IMG_SIZE  # noqa: E402
from optics.camera import Camera  # noqa: E402
from optics.sensor import Sensor, mono_mix  # noqa: E402

log = logging.getLogger("privacy_frontier")

DEFAULT_CAMERAS = ("lowres8,lowres12,lowres16,blur2,blur4,blur8,pixelate4,pixelate8,pixelate16,face-deid,"
                   "freqband,adv,stop60,stop80,stop110,stopadv80x2")
REFERENCE_SIZE = 128  # face-crop side [px] at which blur sigmas and pixelation blocks are given


class ResampleCamera(nn.Module):
    """Baseline capture: low resolution (area down to ``size``, bicubic up) or pixelation (``block`` px cells),
    then the sensor (noise + ADC)."""

    def __init__(self, kind: str, param: int):
        super().__init__()
        if kind not in ("lowres", "pixelate") or param < 1:
            raise ValueError(f"bad baseline {kind}{param}")
        self.kind, self.param = kind, int(param)
        self.sensor = Sensor()

    def forward(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        h, w = image.shape[-2:]
        if self.kind == "lowres":
            small = F.interpolate(image, size=(self.param, self.param), mode="area")
            out = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
        else:
            pooled = F.avg_pool2d(image, self.param, stride=self.param, ceil_mode=True, count_include_pad=False)
            out = F.interpolate(pooled, scale_factor=self.param, mode="nearest")[..., :h, :w]
        return self.sensor(out.clamp(0, 1), noise=True, generator=generator)


def _trainable_lens(config, quantize_levels: int = 0):
    """A trainable lens of ``config``, quantisation-aware (pupil-sample quantiser) with its range recorded in the
    config when ``quantize_levels`` > 0."""
    from optics.lens import Lens
    from optics.quantize import QuantizedLens, default_quantize_range

    if not quantize_levels:
        return Lens(config)
    config = config.replace(height_range=list(default_quantize_range(config)))
    return QuantizedLens(config, quantize_levels)


def face_deid_lens(quantize_levels: int = 0):
    """The face-deid preset lens (trainable), quantisation-aware with its range recorded in the config."""
    from optics.lens import load_lens_config

    return _trainable_lens(load_lens_config("face-deid"), quantize_levels)


def stop_lens(radius_um: float, quantize_levels: int = 0):
    """The privacy stop: the face-deid lens stopped down to ``radius_um`` and focused on the face (0.75 m).

    An incoherent imaging system passes no spatial frequency above its cutoff D / (lambda z) (the MTF is the
    pupil's autocorrelation, zero beyond twice the pupil radius), whatever the attacker's compute: at 50 mm and
    a 128 px capture of 0.95 mm, a 60 um radius cuts at 3.6 / 4.2 / 5.2 cycles per image (R / G / B), 80 um at
    4.8 / 5.5 / 6.9. The
    remaining band is kept (diffraction-limited), which is what the landmarks need. The Zernike phase stays
    learnable (adversarial lenses start from here with ``stop<um>`` + ``adv``).
    """
    from optics.lens import load_lens_config

    config = load_lens_config("face-deid").replace(aperture_radius=float(radius_um) * 1e-6, focus_distance=0.75,
                                                   psf_size=512)
    return _trainable_lens(config, quantize_levels)


def build(spec: str, img_size: int, quantize_levels: int) -> tuple[str, nn.Module, dict]:
    """(label, camera, Stage I overrides) of a camera spec; ``<spec>@<photons>`` sets the sensor's photons per
    pixel at white (default SensorConfig: 20000), e.g. ``stop80@32`` = the stop with the light of the face-deid
    camera's exposure scaled by the aperture area; ``<spec>+mono`` images through a monochrome sensor
    (optics.sensor.MONO_RESPONSE), e.g. ``lowres16+mono``, ``ckpt:checkpoints/stage1_optics.ckpt+mono``."""
    if spec.endswith("+mono"):
        from optics.sensor import sensor_config

        label, camera, overrides = build(spec[:-len("+mono")], img_size, quantize_levels)
        camera.sensor = Sensor(sensor_config("mono", camera.sensor.config))
        return f"{label}, monochrome sensor", camera, overrides
    if "@" in spec:
        from optics.sensor import SensorConfig

        base, photons = spec.split("@")
        label, camera, overrides = build(base, img_size, quantize_levels)
        camera.sensor = Sensor(SensorConfig(photons_at_white=float(photons), full_well=float(photons)))
        return f"{label}, {float(photons):g} photons at white", camera, overrides
    scale = img_size / REFERENCE_SIZE
    for kind in ("lowres", "pixelate", "blur"):
        if spec.startswith(kind):
            p = float(spec[len(kind):])
            if kind == "lowres":
                return f"low-res {int(p)}x{int(p)}", ResampleCamera("lowres", int(p)), {"freeze_lens": True}
            if kind == "pixelate":
                return (f"pixelate {int(p)} px", ResampleCamera("pixelate", max(1, round(p * scale))),
                        {"freeze_lens": True})
            # the Stage I trainer bins every PSF from the 256 px reference sensor (optics.binning): give the
            # Gaussian there, so that it has sigma p at 128 px and p * img_size / 128 at img_size
            sigma_ref = p * REFERENCE_IMG_SIZE / REFERENCE_SIZE
            return (f"blur sigma {p:g} px", Camera(torch.from_numpy(gaussian_psf(sigma_ref)).float(), noise=True),
                    {"freeze_lens": True})
    if spec == "face-deid":
        return "face-deid (fixed)", Camera(face_deid_lens(), noise=True), {"freeze_lens": True}
    if spec == "freqband":
        return ("frequency-band lens", Camera(face_deid_lens(quantize_levels), noise=True),
                {"lambda_privacy": 1.0, "lambda_adv": 0.0})
    if spec.startswith("stopadv"):  # stopadv<um>x<weight>: the stop with an adversarially trained phase
        um, w = (float(v) for v in spec[len("stopadv"):].split("x"))
        return (f"adversarial stop lens (r={um:g} um, w={w:g})", Camera(stop_lens(um, quantize_levels), noise=True),
                {"lambda_privacy": 0.0, "lambda_adv": w})
    if spec.startswith("stop"):
        um = float(spec[4:])
        return (f"privacy stop r={um:g} um (f/{50e3 / (2 * um):.0f})", Camera(stop_lens(um), noise=True),
                {"freeze_lens": True})
    if spec.startswith("adv"):
        w = float(spec[3:])
        return (f"adversarial lens (w={w:g})", Camera(face_deid_lens(quantize_levels), noise=True),
                {"lambda_privacy": 1.0, "lambda_adv": w})
    if spec.startswith("ckpt:"):
        from pipelines.common import lens_sensor, load_optic

        from data.checkpoint import load_checkpoint

        path = spec[5:]
        meta = load_checkpoint(path).get("stage1_config") or {}
        w = float(meta.get("lambda_adv", 0.0) or 0.0)
        where = f"{Path(path).parent.name}/{Path(path).name}"
        if meta.get("freeze_lens"):
            label = f"fixed lens + Stage I regressor ({where})"
        elif w > 0:
            label = f"adversarial lens (w={w:g}, {where})"
        else:
            label = f"frequency-band lens ({where})"
        sensor = lens_sensor(path)  # the checkpoint's own sensor (colour / monochrome)
        if sensor.mono_response is not None:
            label += ", monochrome sensor"
        return label, Camera(load_optic(path), sensor=sensor, noise=True), {"freeze_lens": True}
    raise ValueError(f"unknown camera {spec!r}")


def load_split(img_size: int, teacher, max_train: int | None) -> tuple[FaceLandmarkSet, FaceLandmarkSet]:
    from data.datasets import SourceDataset, scan
    from pipelines.faces import default_face_dirs

    sets = []
    for folder, limit in zip(default_face_dirs(img_size), (max_train, None)):
        ds = SourceDataset(scan(folder), img_size, cache=True)
        if limit:
            ds.files, ds.targets = ds.files[:limit], ds.targets[:limit]
        res = teacher.landmarks_for_files(ds.files, img_size)
        sets.append(FaceLandmarkSet(ds, res.landmarks, res.found))
        log.info("%s: %d faces, dlib teacher found %d", folder, len(ds), int(res.found.sum()))
    return sets[0], sets[1]


def _numpy(batch: torch.Tensor) -> list[np.ndarray]:
    return [np.ascontiguousarray(t.clamp(0, 1).permute(1, 2, 0).cpu().numpy().astype(np.float32)) for t in batch]


def _landmarks(data: FaceLandmarkSet) -> list:
    return [data.landmarks[i].numpy() if bool(data.found[i]) else None for i in range(len(data))]


def run_camera(spec: str, a: argparse.Namespace, train: FaceLandmarkSet, val: FaceLandmarkSet, embedder,
               gallery: dict) -> dict:
    from metrics.identity import gallery_reid

    t0 = time.time()
    label, camera, overrides = build(spec, a.img_size, a.quantize_levels)
    cfg = Stage1Config(**{**dict(img_size=a.img_size, batch_size=a.batch_size, heatmap_mode="landmarks",
                                 num_landmarks=68, lambda_privacy=0.0, optics_lr=a.optics_lr,
                                 regressor_lr=a.regressor_lr, seed=a.seed,
                                 regressor={"head": "linear"} if a.regressor == "linear" else {"base": 16, "depth": 3},
                                 adversary={"base": 16, "depth": 3}), **overrides})
    trainer = Stage1Trainer(camera, cfg, train, val)
    from tqdm import tqdm

    steps = a.stage1_steps if (trainer.train_lens or a.regressor == "cnn") else 0  # linear + fixed: closed form
    for _ in tqdm(range(steps), desc=f"{label}: Stage I", leave=False):
        trainer.train_step()
    utility = trainer.evaluate(val)
    with torch.no_grad():
        psf = trainer.capture_psf()
    # the attacked captures come from the same sensor (photons, colour / monochrome) as Stage I's
    frozen = Camera(psf.detach().float(), sensor=camera.sensor.config, noise=True) if psf is not None else camera
    frozen.requires_grad_(False)
    clean_train = train.batch(range(len(train)))[0]
    clean_val = val.batch(range(len(val)))[0]
    gen = torch.Generator().manual_seed(a.seed + 99)
    with torch.no_grad():
        captures = _numpy(capture_with(frozen, clean_val, gen, frozen.psf() if psf is not None else None))
    attacked = {"capture": captures}
    if psf is not None:
        p = frozen.recorded_psf().detach().cpu().numpy()  # a monochrome capture is deconvolved with its own PSF
        if "wiener" in a.attacks:
            attacked["wiener"] = [wiener_attack(c, p) for c in captures]
        if "rl" in a.attacks:
            attacked["rl"] = [richardson_lucy_attack(c, p) for c in captures]
    net = train_camera_inverter(frozen, clean_train, iters=a.inverter_iters, batch_size=a.batch_size,
                                base=a.inverter_base, depth=a.inverter_depth, loss=a.inverter_loss, seed=a.seed)
    attacked["inverter"] = invert(net, captures)
    ids = list(range(len(val)))
    lms = _landmarks(val)
    attacks = {}
    grey = _grey_gallery(camera, embedder, gallery, train, val, lms)
    for name, images in attacked.items():
        probes = embedder.embed(images, lms)
        attacks[name] = gallery_reid(probes, ids, gallery["val"], ids, gallery["train"])
        if grey is not None:  # the attacker who knows the sensor is monochrome also greys its gallery
            attacks[f"{name}, grey gallery"] = gallery_reid(probes, ids, grey["val"], ids, grey["train"])
    strongest = max(attacks, key=lambda k: attacks[k]["heldout"]["rank1"])
    row = {"camera": spec, "label": label, "nme": utility["nme"], "heatmap_loss": utility["heatmap"],
           "adversary_identity_correlation": utility["adversary_identity_correlation"], "attacks": attacks,
           "strongest_attack": strongest, "rank1": attacks[strongest]["heldout"]["rank1"],
           "rank5": max(v["heldout"]["rank5"] for v in attacks.values()),
           "rank1_large": max(v["large"]["rank1"] for v in attacks.values()),
           "rank5_large": max(v["large"]["rank5"] for v in attacks.values()),
           "seconds": round(time.time() - t0, 1), "stage1": {k: v for k, v in overrides.items()}}
    if trainer.lens is not None:
        row["quantize_levels"] = getattr(trainer.lens, "levels", None)
        if a.save_lenses and trainer.train_lens:
            row["checkpoint"] = str(_save_lens(trainer, Path(a.out) / "lenses" / spec))
    log.info("%s: NME %.4f, rank-1 %.3f after %s (large gallery %.3f), %.0f s", label, row["nme"], row["rank1"],
             strongest, row["rank1_large"], row["seconds"])
    return row


def _grey_gallery(camera: nn.Module, embedder, gallery: dict, train: FaceLandmarkSet, val: FaceLandmarkSet,
                  lms: list) -> dict | None:
    """For a monochrome camera: the galleries' clean photos through the sensor's band response (grey), embedded
    (cached per response), else None."""
    w = camera.sensor.config.mono_response  # every camera of this benchmark has a Sensor
    if w is None:
        return None
    key = ("grey", tuple(w))
    if key not in gallery:
        def grey(data: FaceLandmarkSet) -> list[np.ndarray]:
            clean = data.batch(range(len(data)))[0]
            return _numpy(mono_mix(clean, w, dim=1).expand_as(clean))

        gallery[key] = {"val": embedder.embed(grey(val), lms), "train": embedder.embed(grey(train), _landmarks(train))}
    return gallery[key]


def _save_lens(trainer: Stage1Trainer, folder: Path) -> Path:
    trainer.checkpoint_dir = folder
    return trainer.save()


def table(result: dict) -> str:
    n, n_large = result["num_val"], result["num_val"] + result["num_train"]
    trained = any(not r.get("stage1", {}).get("freeze_lens") for r in result["rows"])
    reg = ("linear shape regressor fitted in closed form" + (f" (trained lenses: {result['stage1_steps']} Stage I "
                                                             "steps)" if trained else "")
           if result.get("regressor", "cnn") == "linear" else f"Stage I {result['stage1_steps']} steps")
    lines = [f"Privacy / utility frontier ({n} held-out people, {result['img_size']} px, {reg}, "
             f"inverter {result['inverter_iters']} steps on {result['num_train']} "
             f"attacker faces; rank-1 chance {1 / n:.3f} held-out, {1 / n_large:.4f} large gallery)", "",
             "| camera | landmark NME | rank-1 after strongest attack | (attack) | rank-5 | rank-1 large gallery | "
             "rank-5 large | rank-1 raw capture | rank-1 inverter |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        at = r["attacks"]
        lines.append(f"| {r['label']} | {r['nme']:.4f} | {r['rank1']:.3f} | {r['strongest_attack']} | "
                     f"{r['rank5']:.3f} | {r['rank1_large']:.3f} | {r['rank5_large']:.3f} | "
                     f"{at['capture']['heldout']['rank1']:.3f} | {at['inverter']['heldout']['rank1']:.3f} |")
    if result.get("mean_shape_nme") is not None:
        lines += ["", f"Reference: predicting the mean training landmarks for every face (no capture used) gives NME "
                      f"{result['mean_shape_nme']:.4f} on the held-out faces (the crops are aligned)."]
    return "\n".join(lines) + "\n"


def mean_shape_nme(train: FaceLandmarkSet, val: FaceLandmarkSet) -> float:
    """NME on ``val`` of predicting the mean training landmarks for every face (the no-information predictor)."""
    from anonymizer.stage1.heatmap import landmark_nme

    keep_t, keep_v = train.found.bool(), val.found.bool()
    mean = train.landmarks[keep_t].mean(0, keepdim=True)
    target = val.landmarks[keep_v]
    return float(landmark_nme(mean.expand_as(target), target).mean())


def _short(label: str) -> str:
    """Figure label: the camera without the checkpoint path."""
    if "stage1_optics.ckpt" in label:
        return "shipped Stage I"
    if label.startswith("adversarial lens (w="):
        return "adversarial w=" + label[len("adversarial lens (w="):].split(",")[0]
    return label.split(" (")[0] if label.endswith(".ckpt)") else label


def figure(result: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 6.0))
    colours = {"low-res": "tab:blue", "blur": "tab:orange", "pixelate": "tab:green", "face-deid": "tab:gray",
               "frequency": "tab:purple", "adversarial": "tab:red", "Stage I": "tab:red", "privacy stop": "black"}
    for r in result["rows"]:
        c = next((v for k, v in colours.items() if r["label"].startswith(k)), "black")
        marker = "*" if r["label"].startswith(("adversarial", "Stage I")) or "stopadv" in r["label"] else "o"
        ax.scatter(r["nme"], r["rank1"], c=c, marker=marker, s=120 if marker == "*" else 50, zorder=3)
        ax.annotate(r.get("short") or _short(r["label"]), (r["nme"], r["rank1"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    chance = 1 / result["num_val"]
    low16 = [r["nme"] for r in result["rows"] if r["label"].startswith("low-res 16x16")]
    if low16:
        ax.axvline(1.25 * low16[0], color="tab:blue", ls=":", lw=0.8,
                   label=f"1.25 x the NME of low-res 16x16 ({1.25 * low16[0]:.4f})")
    ax.axhline(chance, color="k", ls="--", lw=0.8, label=f"chance ({chance:.3f})")
    ax.axhline(chance + 0.05, color="k", ls=":", lw=0.8, label="chance + 5 points")
    if result.get("mean_shape_nme") is not None:
        ax.axvline(result["mean_shape_nme"], color="tab:brown", ls="--", lw=0.8,
                   label=f"NME of the mean training shape ({result['mean_shape_nme']:.3f}, no capture used)")
    ax.set_xlabel("landmark NME of the Stage I regressor (lower = more useful)")
    ax.set_ylabel("rank-1 re-identification after the strongest attack")
    ax.set_title(f"Privacy / utility frontier, {result['num_val']} held-out people, {result['img_size']} px")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--img_size", type=int, default=128)
    p.add_argument("--cameras", default=DEFAULT_CAMERAS, help="comma list (adv = one entry per --adv_weights)")
    p.add_argument("--adv_weights", default="0.5,2,8", help="privacy weights of the adversarial lenses")
    p.add_argument("--lens_checkpoints", default="", help="comma list of Stage I checkpoints to add (frozen)")
    p.add_argument("--stage1_steps", type=int, default=600, help="Stage I steps per trained lens (and per camera "
                   "with --regressor cnn)")
    p.add_argument("--regressor", default="linear", choices=["linear", "cnn"], help="Stage I landmark regressor: "
                   "the closed-form linear shape regressor (anonymizer/stage1/shape.py) or the CNN heatmap U-Net")
    p.add_argument("--inverter_iters", type=int, default=3000, help="attacker inverter steps per camera")
    p.add_argument("--inverter_base", type=int, default=32)
    p.add_argument("--inverter_depth", type=int, default=3)
    p.add_argument("--inverter_loss", default="band", choices=["l1", "band"])
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--optics_lr", type=float, default=1e-2, help="waves of surface height per step")
    p.add_argument("--regressor_lr", type=float, default=3e-3)
    p.add_argument("--quantize_levels", type=int, default=16, help="trained lenses: height levels (0 = off)")
    p.add_argument("--max_train", type=int, default=None, help="use at most this many training faces")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--save_lenses", action="store_true", help="save the lenses trained here under <out>/lenses")
    p.add_argument("--attacks", default="wiener,rl", help="classical attacks besides the raw capture and the "
                   "inverter (always run): comma list of wiener, rl")
    p.add_argument("--merge", default="", help="comma list of privacy_frontier.json files of earlier runs (same "
                   "protocol) whose rows join this run's table and figure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/privacy_frontier")
    p.add_argument("--figure", default="docs/frontier.png")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    torch.set_num_threads(max(1, a.threads))
    specs = []
    for s in [s.strip() for s in a.cameras.split(",") if s.strip()]:
        specs += [f"adv{w.strip()}" for w in a.adv_weights.split(",") if w.strip()] if s == "adv" else [s]
    specs += [f"ckpt:{c.strip()}" for c in a.lens_checkpoints.split(",") if c.strip()]
    for s in specs:  # validate every spec before the first expensive step
        build(s, a.img_size, a.quantize_levels)
    from anonymizer.stage1.teacher import LandmarkTeacher
    from metrics.identity import FaceEmbedder

    start = time.time()
    train, val = load_split(a.img_size, LandmarkTeacher("dlib"), a.max_train)
    embedder = FaceEmbedder()
    gallery = {"val": embedder.embed(_numpy(val.batch(range(len(val)))[0]), _landmarks(val)),
               "train": embedder.embed(_numpy(train.batch(range(len(train)))[0]), _landmarks(train))}
    rows = []
    out = Path(a.out)
    result = {"img_size": a.img_size, "stage1_steps": a.stage1_steps, "inverter_iters": a.inverter_iters,
              "regressor": a.regressor,
              "inverter": {"base": a.inverter_base, "depth": a.inverter_depth, "loss": a.inverter_loss},
              "num_train": len(train), "num_val": len(val), "chance_rank1": 1 / len(val),
              "chance_rank1_large": 1 / (len(val) + len(train)), "seed": a.seed, "rows": rows,
              "mean_shape_nme": mean_shape_nme(train, val),
              "protocol": "probe = attacked capture of person i aligned with the clean photo's dlib landmarks; "
                          "gallery = clean photos of the held-out people (+ the training faces as distractors "
                          "in the large gallery; a monochrome camera's attacks also against the greyed galleries); rank-1 = "
                          "max over attacks (capture, Wiener, RL, inverter)"}
    import json

    for path in [m.strip() for m in a.merge.split(",") if m.strip()]:
        earlier = json.loads(Path(path).read_text())
        for key in ("img_size", "num_val", "num_train"):
            if earlier[key] != result[key]:
                raise ValueError(f"{path}: {key} {earlier[key]} differs from this run's {result[key]}")
        rows += [dict(r, merged_from=str(path)) for r in earlier["rows"]]
    for s in specs:
        rows.append(run_camera(s, a, train, val, embedder, gallery))
        result["seconds"] = round(time.time() - start, 1)
        save_json(out / "privacy_frontier.json", result)  # partial results survive an interrupted run
    result["seconds"] = round(time.time() - start, 1)
    save_json(out / "privacy_frontier.json", result)
    text = table(result)
    save_text(out / "privacy_frontier.md", text)
    save_figure(Path(a.figure), figure(result))
    print(text)
    print(f"total {time.time() - start:.0f} s; written to {out} and {a.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

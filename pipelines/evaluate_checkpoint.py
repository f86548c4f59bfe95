"""``--mode eval --checkpoint_dir DIR [--resume_iter K]``: the reference protocol on a trained anonymizer.

For every target domain: each validation source of another domain (every source when the model has one domain)
is anonymized with ``--num_outs_per_domain`` references drawn (seeded) from the target domain's training images.
FID compares all outputs with the target domain's training images; FD/BB/LM and re-identification pair the
outputs of the first reference with their sources (the clean gallery is every validation source). Numbers are
averaged over domain pairs. The raw capture, the baselines and the attacks on the capture (with the checkpoint's
own capture PSF, i.e. the true PSF) are scored in the same harness.

``attribute`` in ``--attacks`` (models with >= 2 domains) is the attribute attack: for every method (clean
originals, anonymized outputs of the first reference, capture, baselines) a small CNN learns each image's
SOURCE domain (e.g. gender) from the protected images of half of the validation sources (every other source
in file order) and is scored on the other half. ``attribute_accuracy`` is stored per method and
``settings.attribute`` holds the chance level (majority rate of the test labels) and the split sizes.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def _average(results: list[dict]) -> dict:
    """Per-domain-pair results combined: counts (int leaves) are summed, rates / distances (float leaves)
    averaged (None where any pair lacks the value)."""
    if len(results) == 1:
        return results[0]
    out: dict = {}
    for key, value in results[0].items():
        values = [r.get(key) for r in results]
        if isinstance(value, dict):
            out[key] = _average(values)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            out[key] = value
        elif any(v is None for v in values):
            out[key] = None
        elif all(isinstance(v, int) for v in values):
            out[key] = int(sum(values))
        else:
            out[key] = float(np.mean(values))
    return out


def _images(dataset, indices) -> list[np.ndarray]:
    return [dataset.load(i).permute(1, 2, 0).numpy().astype(np.float32) for i in indices]


def attribute_rows(protected: dict[str, dict[int, np.ndarray]], labels: dict[int, int], iters: int,
                   seed: int = 0) -> tuple[dict[str, float], dict]:
    """The attribute attack on every method's protected images (see the module docstring).

    Args:
        protected: {method: {source index: protected image}}.
        labels: {source index: source domain}.

    Returns:
        ({method: test accuracy}, {"chance", "num_train", "num_test", "iters"}).

    Raises:
        ValueError: fewer than 4 sources or a single domain in the training half.
    """
    from metrics.attacks import attribute_attack, majority_rate

    order = sorted(labels)
    train, test = order[0::2], order[1::2]
    if len(test) < 2 or len({labels[i] for i in train}) < 2:
        raise ValueError(f"the attribute attack needs >= 4 validation sources from >= 2 domains "
                         f"(got {len(order)} sources, training half labels {sorted({labels[i] for i in train})})")
    accuracy = {}
    for method, images in protected.items():
        log.info("attribute attack on %s (%d train / %d test)", method, len(train), len(test))
        accuracy[method] = attribute_attack([images[i] for i in train], [labels[i] for i in train],
                                            [images[i] for i in test], [labels[i] for i in test],
                                            iters=iters, seed=seed)
    info = {"chance": majority_rate([labels[i] for i in test]), "num_train": len(train), "num_test": len(test),
            "iters": iters}
    return accuracy, info


def reference_transfer(sources: list[np.ndarray], refs: list[np.ndarray], outputs: np.ndarray) -> dict:
    """Reference-transfer accuracy (dlib embedding of each output nearest to its own reference, with the chance
    level 1 / K), diversity (mean pairwise dlib distance of one source's outputs across the K references) and the
    pixel reference / source dependence of (B, K, S, S, 3) all-pairs outputs (metrics.reference_transfer)."""
    from metrics.identity import FaceEmbedder
    from metrics.reference_transfer import embedding_metrics, pixel_dependence

    emb = FaceEmbedder()
    b, k = outputs.shape[:2]
    out_emb = emb.embed([outputs[i, j] for i in range(b) for j in range(k)]).reshape(b, k, -1)
    res = embedding_metrics(out_emb, emb.embed(list(refs)), emb.embed(list(sources)))
    keep = ("ref_transfer_acc", "ref_transfer_chance", "diversity")
    return {**{key: res[key] for key in keep}, **pixel_dependence(outputs)}


def run_protocol(args: argparse.Namespace) -> tuple[dict, dict]:
    """Returns (methods, info): methods = {"anonymized", "capture", baselines..., attacks...}."""
    from anonymizer.stage2.sampling import anonymize, load_anonymizer
    from data.datasets import SourceDataset
    from metrics.attacks import ATTACKS, run_attacks
    from metrics.baselines import apply_baseline, parse_baselines
    from metrics.evaluate import DETECTORS, Evaluator, parse_list
    from metrics.fid import InceptionFeatures, fid_from_features, reference_statistics
    from pipelines.common import measured_psf, resolve_device

    device = resolve_device(args.device)
    nets_ema, camera, regressor, meta = load_anonymizer(args.checkpoint_dir, args.resume_iter or None,
                                                        device=device, noise=not args.no_noise, psf=measured_psf(args.psf))
    img_size = int(meta["model"]["img_size"])
    num_domains = int(meta["model"]["num_domains"])
    if args.train_img_dir and args.val_img_dir:
        train_dir, val_dir = Path(args.train_img_dir), Path(args.val_img_dir)
    elif args.train_img_dir or args.val_img_dir:
        raise ValueError("--mode eval from a checkpoint needs both --train_img_dir and --val_img_dir (or neither: "
                         "the embedded face set)")
    else:
        from pipelines.faces import default_face_dirs

        train_dir, val_dir = default_face_dirs(img_size)
    train = SourceDataset(train_dir, img_size, verify="header")
    val = SourceDataset(val_dir, img_size, verify="header", domains=train.domains)
    if len(train.domains) != num_domains:
        raise ValueError(f"{train_dir}: {len(train.domains)} domain folder(s) {train.domains}, the model has "
                         f"{num_domains} domain(s)")
    detectors = parse_list(args.detectors, DETECTORS, "detector")
    baselines = parse_baselines(args.baselines or "")
    attacks = parse_list(args.attacks or "", ATTACKS, "attack")
    attribute = "attribute" in attacks
    attacks = [a for a in attacks if a != "attribute"]
    if attribute and num_domains < 2:
        raise ValueError(f"{meta['path']}: the attribute attack needs domain labels, this model has one domain "
                         f"({train.domains[0]})")
    protected: dict[str, dict[int, np.ndarray]] = {"anonymized": {}, "capture": {}}
    k = max(1, int(args.num_outs_per_domain))
    gen = torch.Generator().manual_seed(args.seed)
    extractor = InceptionFeatures(args.fid_backend, args.fid_weights)
    pair_results, capture_results = [], []
    sources_all: list[int] = []
    for trg in range(num_domains):
        src_idx = [i for i, y in enumerate(val.targets) if num_domains == 1 or int(y) != trg]
        if args.max_images:
            src_idx = src_idx[:args.max_images]
        trg_train = [i for i, y in enumerate(train.targets) if int(y) == trg]
        if not src_idx or not trg_train:
            raise ValueError(f"domain {train.domains[trg]}: no validation sources or no training references")
        refs = [trg_train[int(j)] for j in torch.randperm(len(trg_train), generator=gen)[:k]]
        sources = _images(val, src_idx)
        names = [Path(val.files[i]).name for i in src_idx]
        x = torch.from_numpy(np.stack(sources).transpose(0, 3, 1, 2)).to(device)
        r = torch.from_numpy(np.stack(_images(train, refs)).transpose(0, 3, 1, 2)).to(device)
        torch.manual_seed(args.seed)
        res = anonymize(nets_ema, camera, regressor, x, r, domains=trg)
        outputs = res.outputs.cpu().numpy().transpose(0, 1, 3, 4, 2)  # (B, K, S, S, 3)
        captures = list(res.capture.cpu().numpy().transpose(0, 2, 3, 1))
        stats_cache = Path(args.fid_stats) if args.fid_stats else None
        if stats_cache is not None and num_domains > 1:
            stats_cache = stats_cache.with_name(f"{stats_cache.stem}_{train.domains[trg]}.npz")
        mu, sigma = reference_statistics(_images(train, trg_train), extractor, stats_cache)
        evaluator = Evaluator(sources, names, detectors=detectors, fid=False, device="cpu")
        result = evaluator.evaluate(list(outputs[:, 0]))
        result.update(reference_transfer(sources, _images(train, refs), outputs))
        result["fid"] = fid_from_features(extractor.features(list(outputs.reshape(-1, *outputs.shape[2:]))),
                                          mu, sigma)
        pair_results.append(result)
        capture_results.append(evaluator.evaluate(captures))
        sources_all.extend(src_idx)
        for j, i in enumerate(src_idx):
            protected["anonymized"].setdefault(i, outputs[j, 0])
            protected["capture"].setdefault(i, captures[j])
        log.info("target %s: %d sources x %d references, FID %.2f", train.domains[trg], len(src_idx), k,
                 result["fid"])
    methods = {"anonymized": _average(pair_results), "capture": _average(capture_results)}
    unique = sorted(set(sources_all))
    originals = _images(val, unique) if baselines or attacks or attribute else []
    protected["clean"] = dict(zip(unique, originals))
    if baselines or attacks:
        evaluator = Evaluator(originals, [Path(val.files[i]).name for i in unique], detectors=detectors,
                              fid=False, device="cpu")
        for name, param in baselines.items():
            images = [apply_baseline(name, im, param) for im in originals]
            methods[name] = evaluator.evaluate(images)
            protected[name] = dict(zip(unique, images))
        if attacks:
            # the attacker's own faces (the inverter's training set, and the large gallery's distractors): the
            # training split, people disjoint from the evaluated held-out ones
            own = _images(train, list(range(len(train))))
            attacked = run_attacks(evaluator, camera, attacks, args.inverter_iters, args.seed, str(device),
                                   attacker_images=own, distractors=own, inverter_base=args.inverter_base,
                                   inverter_depth=args.inverter_depth, inverter_loss=args.inverter_loss)
            attacked.pop("capture", None)
            methods.update(attacked)
    attribute_info = None
    if attribute:
        accuracy, attribute_info = attribute_rows(protected, {i: int(val.targets[i]) for i in unique},
                                                  iters=int(getattr(args, "attribute_iters", 300)), seed=args.seed)
        attribute_info["clean_accuracy"] = accuracy.pop("clean")
        for name, acc in accuracy.items():
            methods[name]["attribute_accuracy"] = acc
    info = {"attribute": attribute_info, "checkpoint": meta["path"], "step": meta["step"], "img_size": img_size,
            "domains": train.domains,
            "num_outs_per_domain": k, "train_img_dir": str(train_dir), "val_img_dir": str(val_dir)}
    return methods, info

"""Markdown report of an evaluation, in the layout of the reference README's results table.

Rows = methods; columns = FID, then FD / BB / LM for MTCNN and for dlib, then re-identification.
"""
from __future__ import annotations

from typing import Any

DETECTOR_TITLES = {"mtcnn": "MTCNN", "dlib": "dlib", "dlib_cnn": "dlib-CNN"}


def _num(value: Any, digits: int = 2, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if percent else f"{value:.{digits}f}"


def markdown_table(methods: dict[str, dict], detectors: list[str] | None = None,
                   attribute_info: dict | None = None) -> str:
    """Markdown table of per-method results (see :mod:`metrics.evaluate` for the result layout).

    Args:
        methods: {method name: result dict}.
        detectors: detector keys to show (default: those present in the first result).
        attribute_info: ``{"chance", "clean_accuracy", ...}`` of the attribute attack, printed in the legend.

    Returns:
        the table with a legend, as Markdown text.
    """
    if not methods:
        return "_no results_\n"
    first = next(iter(methods.values()))
    if detectors is None:
        detectors = [d for d in DETECTOR_TITLES if d in first]
    head = ["Method", "N", "FID ↓"]
    for d in detectors:
        t = DETECTOR_TITLES[d]
        head += [f"FD {t} ↑", f"BB {t} [px] ↓", f"IoU {t} ↑", f"LM {t} [px] ↓", f"NME {t} ↓"]
    head += ["Re-ID rank-1 ↓", "Emb. dist. ↑", "TAR@FAR ↓"]
    attribute = any(r.get("attribute_accuracy") is not None for r in methods.values())
    if attribute:
        head.append("Attr. acc. ↓")
    transfer = any(r.get("ref_transfer_acc") is not None for r in methods.values())
    if transfer:
        head += ["Ref. transfer ↑ (chance)", "Diversity ↑"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + [":---:"] * (len(head) - 1)) + "|"]
    for name, r in methods.items():
        row = [name, str(r.get("num_images", "–")), _num(r.get("fid"))]
        for d in detectors:
            g = r.get(d) or {}
            row += [_num(g.get("detection_rate"), percent=True), _num(g.get("bbox_center_px")),
                    _num(g.get("bbox_iou"), 3), _num(g.get("landmarks_px")), _num(g.get("landmarks_nme"), 3)]
        row += [_num(r.get("reid_rank1"), percent=True), _num(r.get("reid_mean_distance"), 3),
                _num(r.get("reid_tar_at_far"), percent=True)]
        if attribute:
            row.append(_num(r.get("attribute_accuracy"), percent=True))
        if transfer:
            acc, chance = r.get("ref_transfer_acc"), r.get("ref_transfer_chance")
            row += [f"{_num(acc, percent=True)} ({_num(chance, percent=True)})" if acc is not None else "–",
                    _num(r.get("diversity"), 3)]
        lines.append("| " + " | ".join(row) + " |")
    misses = []
    for name, r in methods.items():
        for d in detectors:
            g = r.get(d) or {}
            if g.get("misses"):
                misses.append(f"{name}/{DETECTOR_TITLES[d]}: {g['misses']} of {g.get('num_images')}")
    legend = [
        "",
        "FD: fraction of images with a detected face. BB: distance between the box centres of the image and its "
        "original [px]; IoU of the boxes. LM: mean absolute landmark coordinate difference [px] (5 MTCNN / "
        "68 dlib points); NME: mean landmark distance / inter-ocular distance of the original. BB/LM/NME use "
        "only pairs where the detector finds a face in both images.",
        "Re-ID: rank-1 identification of each image against the gallery of clean originals (dlib ResNet "
        "embeddings; images without a detected face are embedded from a centred chip, not dropped). Emb. dist.: "
        "mean embedding distance to the own original (dlib's same-person threshold is 0.6). TAR@FAR: at "
        "FAR 1e-3 over all image x original pairs (– when there are < 1000 impostor pairs).",
    ]
    if attribute:
        info = attribute_info or {}
        level = "".join(f"; {title} {_num(info[key], percent=True)}" for key, title in
                        (("chance", "chance (majority class)"), ("clean_accuracy", "on the clean originals"))
                        if info.get(key) is not None) + "."
        legend.append("Attr. acc.: test accuracy of a CNN trained on half of the protected images to predict "
                      "the source's domain (attribute attack)" + level)
    if transfer:
        legend.append("Ref. transfer: fraction of outputs whose dlib embedding is nearest to their own reference "
                      "among the references used (chance 1 / number of references). Diversity: mean pairwise dlib "
                      "embedding distance between one source's outputs across references.")
    if misses:
        legend.append("Pairs with a detector miss (left out of BB/LM): " + "; ".join(misses) + ".")
    return "\n".join(lines + legend) + "\n"

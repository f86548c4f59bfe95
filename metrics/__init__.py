"""Evaluation: detectors (MTCNN, dlib), FID, geometry (FD/BB/LM), identity, attacks, baselines, reports."""

"""Video de-identification through the privacy camera: file I/O, tracking, attributes, paste-back, evaluation."""

"""Stage I: landmark teachers, heatmaps + regressor, optics losses, the joint lens/regressor trainer."""

"""The learned parts: heatmap regressor (Stage I) and the StarGAN-v2-style anonymizer (Stage II)."""

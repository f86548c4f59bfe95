"""The bridge to the physical prototype: measured PSFs, calibration, fabrication files."""

"""Calibration: ``calibration_data`` (reading .npz/.npy/folders into batches) and
``calibration`` (range statistics and the minmax/percentile/entropy/mse methods)."""

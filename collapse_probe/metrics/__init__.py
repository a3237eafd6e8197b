"""Stage 2, stream: stateful float64 accumulators (update / merge / sync / state_dict / compute).

Each calls the pure maths of :mod:`collapse_probe.functional`, so the batch and streaming paths
share every formula: :mod:`.covariance` (one covariance), :mod:`.grouped` (K jackknife groups),
:mod:`.lidar` (LiDAR's within/between scatter), :mod:`.solve` (many spectra, one batched solve).
"""

"""Infrastructure, out of the way of the flow: devices, process ranks, threads, lazy imports, RNG state."""

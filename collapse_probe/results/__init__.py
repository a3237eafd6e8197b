"""Stage 3, report: what the user keeps. :class:`~.spectrum.Spectrum` (eigenvalues, metrics,
conventions, JSON), the table and frame, and the plots."""

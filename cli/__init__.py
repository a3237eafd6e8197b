"""The collapse-probe command line (installed as the ``collapse_probe_cli`` package)."""

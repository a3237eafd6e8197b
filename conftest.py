"""Doctest collection of the package (pytest's testpaths include collapse_probe/): an integration
module whose optional dependency is not installed cannot be imported, so it is not collected."""

from importlib.util import find_spec

_OPTIONAL = {
    "collapse_probe/integrations/lightning.py": ("lightning", "pytorch_lightning"),
    "collapse_probe/integrations/transformers.py": ("transformers",),
}

collect_ignore = [path for path, needs in _OPTIONAL.items() if not any(find_spec(name) for name in needs)]

"""Data sources: image folders, the built-in demo data set, GPU decode path."""

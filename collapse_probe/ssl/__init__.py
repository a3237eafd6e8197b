"""The reference SimCLR / DirectCLR trainer: losses, heads, augmentations, LARS, loop, evaluation."""

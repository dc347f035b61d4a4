"""Dataset layer: MURA index, validation, internal split, synthetic generator, cache, augmentation."""

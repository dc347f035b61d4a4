"""Dataset layer: MURA index, validation, split, synthetic data, cache, augmentation, PNG/JPEG/DICOM reading."""

"""The inference stage: overlap-tile prediction (`Segmenter`) and predicting files,
folders and stacks."""

"""Training the tag experts: rewards of a tag set (constrained reward shaping), the leakage guard
between training and evaluation windows."""

"""EMG data: raw formats, synthetic generator, and the preprocessed (model-ready) data set."""

"""Open-vocabulary sentence recognition (``task: sentences``): character units, the CTC model,
decoding with a lexicon and an n-gram language model, and CER/WER scoring."""

"""Data: SentencePiece, binarized datasets, preprocessing, batching."""

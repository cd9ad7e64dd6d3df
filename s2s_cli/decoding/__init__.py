"""Decoding: the scorer contract, beam search, greedy search, sampling and the Translator."""

"""Models: encoder, attention, decoder, bridge and the Seq2Seq decoding contract."""

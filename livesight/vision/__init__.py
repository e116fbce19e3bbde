"""Frame sources and decoding, sampling, preprocessing for the vision encoder."""

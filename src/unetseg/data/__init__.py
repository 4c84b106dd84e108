"""Reading, pairing, scanning and batching image/mask folders."""

"""The mechanisms from the papers, one file each: kNN-LM, SPALM, the Memorizing Transformer's memory."""

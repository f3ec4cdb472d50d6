"""``shoestring generate``: sample from a run or any HF causal LM, streamed."""

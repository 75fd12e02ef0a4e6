"""Tree attention and KV moves: a torch reference beside every Triton kernel."""

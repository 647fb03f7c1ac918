"""NNX building blocks shared by the model families (Wan, HunyuanVideo)."""

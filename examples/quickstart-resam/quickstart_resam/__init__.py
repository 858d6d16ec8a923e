"""quickstart-resam: Flower's PyTorch quickstart with RESAM."""

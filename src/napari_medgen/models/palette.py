"""Label colours (RGBA in [0, 1]) shared by models and sample data; torch-free, so opening a sample stays quick.
Class i gets PALETTE[i % len(PALETTE)], background transparent."""

PALETTE = [(0, 0, 0, 0), (0.2, 0.6, 1.0, 1), (1.0, 0.55, 0.1, 1), (0.95, 0.95, 0.3, 1), (0.85, 0.2, 0.2, 1),
           (0.3, 0.85, 0.35, 1), (0.7, 0.35, 0.9, 1), (0.2, 0.9, 0.9, 1), (0.95, 0.45, 0.75, 1)]

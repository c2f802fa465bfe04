"""Device choice, the job mechanism, training loops and inference."""

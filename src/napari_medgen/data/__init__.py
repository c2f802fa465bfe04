"""Intensity normalisation, slicing volumes and finding annotations."""

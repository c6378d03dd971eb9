"""Sweeps over descriptor size, reference spacing and training settings (tables + plots)."""

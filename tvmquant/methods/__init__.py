"""Quantization methods: each turns float weights and calibration statistics into the shared representation."""

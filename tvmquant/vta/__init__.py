"""The VTA target: quantized layers lowered to VTA instruction streams and run on a bit-exact simulator."""

"""Relax rewrites that put tvmquant kernels into an imported model."""

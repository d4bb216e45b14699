"""VARSR: visual autoregressive next-scale super-resolution."""

"""Shared library for arsr: degradation, data, metrics and run plumbing. Imports neither pure nor varsr."""

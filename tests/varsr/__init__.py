"""Test package (unique module names across apps)."""

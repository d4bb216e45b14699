"""Adapters for third-party packages that need patching before import (see compat/basicsr.py)."""

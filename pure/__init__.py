"""PURE: perceive-understand-restore super-resolution on a Chameleon/Lumina-mGPT decoder."""

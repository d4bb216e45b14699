"""VARSR modules: multi-scale VQVAE, transformer, RoPE and diffusion refiner (pure nn.Modules)."""

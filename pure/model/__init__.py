"""PURE modules: the Chameleon decoder and the LlamaGen VQ-8 tokenizer (pure nn.Modules)."""

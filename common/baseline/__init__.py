"""Real-ESRGAN x4plus, the papers' baseline row: weights (`weights`, `ncnn`, `fetch`), any-size tiled
inference (`tiled`) and the folder tool behind ``launch/sample_baseline.py`` (`folder`)."""

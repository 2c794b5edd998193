"""Output formats: pure formatting functions, plus atomic file writing in ``atomic.py``."""

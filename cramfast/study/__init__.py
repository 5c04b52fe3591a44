"""``python -m cramfast.study``: optimizer studies, candidates side by side on the same texts."""

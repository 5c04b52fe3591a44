"""``python -m cramfast.sweep``: a grid of jobs (grid), run resumably (runner) into one SQLite
store (store); the shipped grids in grids/."""

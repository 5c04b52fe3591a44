"""``python -m cramfast.report``: tables and figures from sweep stores (groups: what a group of
rows measures; figures; tables; build: the report itself)."""

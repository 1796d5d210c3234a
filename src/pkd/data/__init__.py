"""Data: examples in, batches out. Readers of files (TSV/CSV/JSONL) and of `datasets` for the
tasks of `pkd.tasks` (GLUE, RACE, custom), multiple choice, unlabelled text for `pkd pretrain`,
transfer sets, encoding and padding, and each task's metrics.

Layer 2: imports `pkd.config` and the leaves (`pkd.errors`, `pkd.fsio`, `pkd.progress`,
`pkd.tasks`).
"""

"""Data: examples in, batches out. `splits` (examples in memory, file and Hub access),
`readers` (single texts and pairs from TSV/CSV/JSONL, the Hub, `datasets`), `kinds` (what
classification, regression, pair scores and multiple choice each do: read, encode, pad,
predict, score), `multiple_choice` (RACE and choice files), `loading` (the kind-agnostic
`load_split`/`encode`/`collator`, and a run's data), `text` (unlabelled text for
`pkd pretrain`), `transfer` (transfer sets) and `metrics`, for the tasks of `pkd.tasks`.

Layer 2: imports `pkd.config` and the leaves (`pkd.errors`, `pkd.fsio`, `pkd.progress`,
`pkd.tasks`).
"""

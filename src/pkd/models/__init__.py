"""Models: loading teachers and encoders of any BERT-family architecture, mean-pooled heads,
student construction (first-k layers, any shape), width projections, a run's results
(metrics.json, `results`) and model cards.

Layer 3: imports `pkd.data`, `pkd.config` and the leaves.
"""

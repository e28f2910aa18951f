"""The synthetic known-answer study: runs, analyses and the results JSONs
(`python -m experiments.study.synthetic`; see docs/synthetic_study.md)."""

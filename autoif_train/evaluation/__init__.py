"""Evaluation of checkpoints: IFEval and IFBench (official strict/loose scoring with `if-verifiable`'s checkers),
the held-out verifier pass rate (scored in the sandbox), and reports (results.json, markdown table, PNG charts).

Entry point: `autoif eval` (`autoif_train/evaluate.py`); benchmarks are registered in `evaluation/base.py`.
"""

"""FEAB benchmark: the prompt, answer parsing, metrics, the paper's tables and charts.

Plain functions only (lmms-eval style); flows wrap them.
"""

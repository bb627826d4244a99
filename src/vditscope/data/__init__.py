"""Procedural data sets made in code (no downloads)."""

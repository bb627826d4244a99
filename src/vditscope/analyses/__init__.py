"""Analyses: drive generations with capture and turn statistics into findings."""

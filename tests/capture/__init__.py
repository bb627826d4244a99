"""Tests of vditscope.capture."""

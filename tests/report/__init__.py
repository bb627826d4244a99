"""Tests of vditscope.report."""

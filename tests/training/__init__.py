"""Tests of vditscope.training."""

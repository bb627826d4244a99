"""Tests of vditscope.adapters."""

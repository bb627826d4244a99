"""Tests of vditscope.store."""

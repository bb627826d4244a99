"""Tests of vditscope.analyses."""

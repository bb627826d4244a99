"""Tests of vditscope.executors."""

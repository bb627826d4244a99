"""Tests of vditscope.stats."""

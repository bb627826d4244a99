"""Test setup: offline, and a private cache directory for the models vditscope builds."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VDITSCOPE_CACHE", tempfile.mkdtemp(prefix="vditscope-test-cache-"))

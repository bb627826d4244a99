"""Training the small models that ship with vditscope."""

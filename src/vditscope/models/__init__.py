"""Small model components of vditscope's own (diffusers-compatible)."""

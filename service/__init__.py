"""imgcls service."""

"""Key derivation and the key hierarchy (no primitives of our own: see ``cryptography``)."""

"""The object store: seals (compress, pad, encrypt, authenticate) and opens objects."""

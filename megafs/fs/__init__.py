"""The thin pyfuse3 adapter over :mod:`megafs.core`."""

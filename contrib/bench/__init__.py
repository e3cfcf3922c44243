"""The benchmark run by ``python contrib/benchmark.py`` (its docstring says what it
measures), in modules:

* ``common``: sizes, logging, the page cache, CPU placement, CPU time of a process
* ``targets``: the plain directory and megafs on a local or S3 store
* ``workloads``: write, read, create, untar, their inputs and the warm-up
* ``run``: one run of the workloads on a target, py-spy on the daemon
* ``s3``: megafs on S3 against raw requests to the same SeaweedFS server
* ``report``: medians, ratios and the tables
* ``cli``: the options and ``main``

The SeaweedFS launcher it uses, ``contrib/seaweed.py``, is shared with the tests.
"""

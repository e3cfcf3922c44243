"""Command-line tools. Each ``main()`` returns a process exit code."""

"""One module per section of issue 10; each has `TITLE` and `run(bench)`."""

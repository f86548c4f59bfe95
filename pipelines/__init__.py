"""One module per main.py mode: glue between the libraries, files on disk and figures. run(args) each."""

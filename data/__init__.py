"""Datasets, face preprocessing and file utilities. Imports nothing else of the project."""

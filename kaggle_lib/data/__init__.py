"""Reasoning data: the shared prompt/target template, loaders of items, batching.

Spec strings are parsed in `kaggle_lib.data_spec` and loaded by `data.sources`."""

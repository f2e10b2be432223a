"""Batch jobs over cohorts on a Dask client, and the ``wsi`` command line."""

"""Stage 1, ingest: a URL list -> raw pairs (img2dataset Parquet shards under data/raw/).

The list is vetted (`url_list`), every address checked the way the resolver reads it
(`addresses`), every fetch made through a vetting proxy (`fetch_proxy`), img2dataset run in
a process of its own (`img2dataset_run`), and the shards assembled (`download`).
Imports only the ground floor.
"""

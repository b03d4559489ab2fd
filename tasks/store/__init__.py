"""The ground floor's stores: the workspace and everything kept in it.

The workspace's folders and locks (`workspace`), files written whole or not at all (`files`),
digests that key stage outputs (`digests`, `stages`), pair keys (`ids`), pairs read from
Parquet (`pairs`), images between their forms (`images`), checkpoints (`checkpoint`) and the
models rebuilt from them (`loaders`), MLflow tracking (`tracking`), the services record
`marble up` leaves (`services_file`), object storage (`objectstore`) and DuckDB views
(`query`). Every stage may import it; it imports no stage.
"""

"""The ground floor's runtime: processes and what supervises them.

Which process is which (`processes`), the reaper that ends marble's descendants with it
(`reaper`), the `marble up` stack of local services (`services`) and its PostgreSQL
(`database`), progress of long loops (`progress`) and the compute device (`devices`).
Every stage may import it; it imports no stage.
"""

"""Units of work with their I/O: each is a plain function; Prefect tasks wrap them in flows/."""

from tasks.settings import apply_malloc_defaults, apply_offline_defaults

apply_offline_defaults()
apply_malloc_defaults()

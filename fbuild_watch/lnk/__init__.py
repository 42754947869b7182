"""`.lnk` resource pointers: large binary assets kept out of the repository.

A `foo.bin.lnk` file is a small JSON manifest (URL + SHA-256) checked in
instead of `foo.bin`. Before each build the blob is fetched once into a
content-addressed cache, verified, and materialized under the project's
resource dir as `foo.bin` (or a directory, for archives).
"""

# Submodules are imported by name (format, cache, fetch, materialize, resolve):
# the watch set needs `format` without pulling in httpx.

"""Images: a store of content-addressed layers and the manifests and names over them, read from OCI layouts,
docker-archives and rootfs trees as hostile input, and written back as OCI layouts.

- `store`: the store (import, commit, pin, prune, names);
- `archive`: what an import reads, told by its content;
- `unpack`: one layer tar placed through directory fds, never through a link;
- `tar`: a layer dir as a tar (export, commit);
- `export`: an image as an OCI layout tar.

`sbx image ...` is `sandbox/cli/image.py`.
"""

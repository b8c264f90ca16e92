"""Files, URIs and image addresses: file systems, canonical URIs, shard members and their reader."""

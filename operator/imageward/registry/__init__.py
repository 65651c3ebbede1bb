"""OCI distribution client: pure protocol modules plus one async transport.

Shaped like h11: everything that is protocol is pure and tested on bytes, and one thin
module does the I/O.

- `model`: references, platforms, layers, image facts (what the rest of imageward reads);
- `reference`: parse and normalise image references (Docker Hub defaults and aliases);
- `auth`: WWW-Authenticate challenges, token requests and answers, docker config and
  pull-Secret credentials and which of them apply to an image;
- `manifests`: manifests, indexes and configs: media types, digests, platform choice;
- `routes`: endpoints (mirrors, plain HTTP for insecure hosts), URLs, HTTP answer details;
- `cache`: facts/manifests by digest, tags, "not found", tokens, lookups in flight;
- `transport`: the aiohttp session: bounded, streamed, never following redirects itself;
- `client`: `RegistryClient`, joining them under deadlines, retries and credentials.
"""

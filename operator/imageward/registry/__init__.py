"""OCI distribution client: pure protocol modules plus one async transport."""

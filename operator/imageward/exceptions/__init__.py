"""ImagePolicyExceptions: a namespaced, expiring, recorded waiver of ImagePolicy rules.

`model` parses the object (pure), `evaluate` waives violations for one image of one pod
(pure, shared by admission and background scans), `store` follows the objects with a
watch so admission reads them from memory.
"""

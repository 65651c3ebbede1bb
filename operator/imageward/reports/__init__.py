"""Background scans of what is running, and the PolicyReports they write.

`targets` (pure) turns watch-fed projections of Pods and workloads into the workloads a
report speaks of; `source` de-duplicates a scan's registry lookups and holds it to its
budget; `build` (pure) turns check results and exceptions into PolicyReports,
`status.violations` and gauges; `scanner` runs it all in the Kopf-peering leader.
"""

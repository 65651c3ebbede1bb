"""Admission: the pure parts of the webhooks.

Reading pods and workload templates out of request bodies (`workloads`), building the
digest-pinning JSONPatch (`patches`), the texts a user sees in kubectl (`messages`) and
the AdmissionReview shapes (`reviews`). Nothing here performs I/O or imports Kopf: the
handlers in `imageward.main` call into these modules and map their results.
"""

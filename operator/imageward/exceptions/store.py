"""ImagePolicyExceptions followed by a watch, in every replica (both serve admission).

Admission reads a namespace's exceptions from memory, never from the API server. Until
the first list is in, there are none: a replica that just started is stricter, never
looser.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from imageward import constants, kube
from imageward.exceptions import evaluate, model
from imageward.prepull import reflector

logger = logging.getLogger(__name__)

_FIRST_LIST_WAIT = 10.0  # seconds start-up waits for the first list before going on


class ExceptionCache:
    """Exceptions by `namespace/name`; an index by namespace rebuilt on change."""

    def __init__(self) -> None:
        self.reflector: reflector.Reflector[model.Parsed] | None = None
        self._version = -1
        self._by_namespace: dict[str, tuple[model.PolicyException, ...]] = {}

    async def start(self, client: kube.Kube, *, max_items: int) -> None:
        """Begin following (once); waits a little for the first list, then goes on (the
        watch keeps trying in the background)."""
        if self.reflector is None:
            self.reflector = reflector.Reflector(
                client,
                what="ImagePolicyExceptions",
                list_fn=client.custom.list_cluster_custom_object,
                args=(constants.GROUP, constants.VERSION, model.PLURAL),
                project=model.project_exception,
                max_items=max_items,
            )
        try:
            await self.reflector.start(wait=_FIRST_LIST_WAIT)
        except kube.KubeError as e:
            logger.warning("ImagePolicyExceptions not listed yet (none apply until then): %s", e)

    async def close(self) -> None:
        if self.reflector is not None:
            await self.reflector.close()

    @property
    def items(self) -> Mapping[str, model.Parsed]:
        return self.reflector.items if self.reflector is not None else {}

    @property
    def version(self) -> int:
        return self.reflector.version if self.reflector is not None else 0

    def for_namespace(self, namespace: str | None) -> tuple[model.PolicyException, ...]:
        """The namespace's usable exceptions (at most evaluate.MAX_PER_NAMESPACE)."""
        if not namespace or self.reflector is None:
            return ()
        if self._version != self.reflector.version:
            grouped: dict[str, list[model.Parsed]] = {}
            for item in self.reflector.items.values():
                grouped.setdefault(item.namespace, []).append(item)
            self._by_namespace = {
                ns: evaluate.select_namespace(items, ns) for ns, items in grouped.items()
            }
            self._version = self.reflector.version
        return self._by_namespace.get(namespace, ())

"""Which entry of an image index a node runs: containerd's platform matching, as data.

A signature, a size limit or a user rule is only as good as the choice of manifest it
looks at. containerd (1.6 to 2.x, what kubelet's CRI pulls through) picks an index
entry like this (`images.Manifest` with `platforms.Only(node)` and a limit of one):

1. Candidates are the entries whose platform the node's matcher accepts, plus the
   entries with no platform at all.
2. They are sorted, stably, by the matcher's preference: the node's own platform
   first, then its fallbacks in order (amd64/v3 -> v2 -> v1 -> 386; arm64 -> arm/v8 ->
   v7 -> v6 -> v5; arm/v7 -> v6 -> v5); entries without a platform go last.
3. The first candidate is taken. A nested index is walked the same way; a manifest
   without a platform runs only if its config's os/architecture match the node.

So among entries of one platform the first listed wins, an annotation never hides an
entry, and `unknown/unknown` (BuildKit's attestation entries) never matches a node.
Windows matching also compares the OS build (`os.version`), which we cannot know for
the node: every Windows entry of the node's architecture counts as selectable.

No I/O here: the client fetches nested indexes and configs and asks `select_entry`
again; `build_node_platforms` enumerates the nodes a pod could land on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from imageward import records
from imageward.registry import model

#: Architectures a Kubernetes node reports (`kubernetes.io/arch`) that Go supports.
KNOWN_ARCHITECTURES = (
    "amd64",
    "arm64",
    "arm",
    "386",
    "ppc64le",
    "s390x",
    "riscv64",
    "mips64le",
    "loong64",
)

#: OSes kubelet runs on.
NODE_OSES = ("linux", "windows")

#: CPU variants a node of each architecture may detect for itself (containerd's
#: `cpuVariant`; amd64 micro-architecture levels since containerd 2.0).
NODE_VARIANTS: dict[str, tuple[str | None, ...]] = {
    "amd64": (None, "v2", "v3", "v4"),
    "arm64": (None, "v9"),
    "arm": ("v7", "v6", "v5", "v8"),
}

#: How deep nested indexes are followed before the image is refused.
MAX_NESTING = 4

_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class PlatformChoice(records.Record):
    """What the pod says about the nodes it may run on (None: anything).

    From `spec.os.name`, and the `kubernetes.io/os` / `kubernetes.io/arch` node
    selector or required node affinity; the CLI's `--platform os/arch[/variant]`.
    """

    __slots__ = ("architecture", "os", "variant")
    os: str | None
    architecture: str | None
    variant: str | None

    def __init__(
        self,
        os: str | None = None,
        architecture: str | None = None,
        variant: str | None = None,
    ) -> None:
        _set(self, "os", os)
        _set(self, "architecture", architecture)
        _set(self, "variant", variant)

    def __str__(self) -> str:
        if self.os is None and self.architecture is None:
            return "any node"
        text = f"{self.os or '*'}/{self.architecture or '*'}"
        return f"{text}/{self.variant}" if self.variant else text


ANY_NODE = PlatformChoice()


def build_choice(platform: PlatformChoice | model.Platform | None) -> PlatformChoice:
    """A choice from what callers have: nothing (any node), a choice, or one platform."""
    if platform is None:
        return ANY_NODE
    if isinstance(platform, PlatformChoice):
        return platform
    return PlatformChoice(platform.os, platform.architecture, platform.variant)


def normalise(platform: model.Platform) -> model.Platform:
    """containerd's `platforms.Normalize`: lower case, arch aliases, default variants."""
    os_name = platform.os.lower()
    if os_name == "macos":
        os_name = "darwin"
    architecture = platform.architecture.lower()
    variant = (platform.variant or "").lower()
    if architecture == "i386":
        architecture, variant = "386", ""
    elif architecture in ("x86_64", "x86-64", "amd64"):
        architecture = "amd64"
        if variant == "v1":
            variant = ""
    elif architecture in ("aarch64", "arm64"):
        architecture = "arm64"
        if variant in ("8", "v8", "v8.0"):
            variant = ""
        elif variant in ("9", "9.0", "v9.0"):
            variant = "v9"
    elif architecture == "armhf":
        architecture, variant = "arm", "v7"
    elif architecture == "armel":
        architecture, variant = "arm", "v6"
    elif architecture == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return model.Platform(os=os_name, architecture=architecture, variant=variant or None)


def _level(variant: str | None) -> int | None:
    text = (variant or "").removeprefix("v")
    return int(text) if text.isdigit() else None


def build_preference(node: model.Platform) -> tuple[model.Platform, ...]:
    """containerd's `platformVector`: the node's platform, then what it also runs, in order."""
    node = normalise(node)
    vector = [node]
    if node.architecture == "amd64":
        level = _level(node.variant)
        if level is not None and level > 1:
            vector += [
                model.Platform(node.os, "amd64", None if lower == 1 else f"v{lower}")
                for lower in range(level - 1, 0, -1)
            ]
        vector.append(model.Platform(node.os, "386"))
    elif node.architecture == "arm":
        level = _level(node.variant)
        if level is not None and level > 5:
            vector += [
                model.Platform(node.os, "arm", f"v{lower}") for lower in range(level - 1, 4, -1)
            ]
    elif node.architecture == "arm64":
        variant = "v9" if node.variant == "v9" else "v8"
        vector += build_preference(model.Platform(node.os, "arm", variant))
    return tuple(vector)


def _rank(entry: model.Platform, preference: Sequence[model.Platform]) -> int | None:
    """Position of the entry's platform in the node's preference, None when it does not run."""
    normalised = normalise(entry)
    if normalised.os == "windows":
        # os.version is unknown for the node: any Windows build of a preferred arch.
        for position, wanted in enumerate(preference):
            if (wanted.os, wanted.architecture, wanted.variant) == (
                "windows",
                normalised.architecture,
                normalised.variant,
            ):
                return position
        return None
    for position, wanted in enumerate(preference):
        if normalised == wanted:
            return position
    return None


def evaluate_runs_on(entry: model.Platform, node: model.Platform) -> bool:
    """Whether a node of platform `node` accepts an image of platform `entry`."""
    return _rank(entry, build_preference(node)) is not None


class Entry(records.Record):
    """An index entry as matching sees it: its position, platform and media type."""

    __slots__ = ("media_type", "platform", "position")
    position: int
    platform: model.Platform | None
    media_type: str

    def __init__(
        self,
        position: int,
        platform: model.Platform | None,
        media_type: str,
    ) -> None:
        _set(self, "position", position)
        _set(self, "platform", platform)
        _set(self, "media_type", media_type)


def select_entries(entries: Sequence[Entry], node: model.Platform) -> tuple[Entry, ...]:
    """The entries a node of platform `node` would take, best first (containerd's order).

    A Linux node takes the first of them; for a Windows node every entry returned is
    possible (the OS build decides), so callers treat all of them as selectable.
    """
    preference = build_preference(node)
    ranked: list[tuple[int, int, Entry]] = []
    for entry in entries:
        if entry.platform is None:
            ranked.append((len(preference), entry.position, entry))
            continue
        rank = _rank(entry.platform, preference)
        if rank is not None:
            ranked.append((rank, entry.position, entry))
    ranked.sort(key=lambda item: (item[0], item[1]))
    chosen = tuple(entry for _, _, entry in ranked)
    if normalise(node).os == "windows":
        return tuple(e for e in chosen if e.platform is not None) or chosen[:1]
    return chosen[:1]


def build_node_platforms(
    choice: PlatformChoice, present: Iterable[model.Platform | None] = ()
) -> tuple[model.Platform, ...]:
    """Every node platform a pod with `choice` could be scheduled on, base variants first.

    Without an OS or architecture, every node OS and known architecture is possible,
    and so is every platform an index lists (a node of an unusual architecture still
    picks among those entries); variants a node may detect for itself are included.
    """
    oses = (choice.os.lower(),) if choice.os else NODE_OSES
    if choice.architecture:
        architectures: tuple[str, ...] = (
            normalise(model.Platform("linux", choice.architecture)).architecture,
        )
    else:
        listed = [normalise(p).architecture for p in present if p is not None]
        architectures = tuple(dict.fromkeys((*KNOWN_ARCHITECTURES, *listed)))
    nodes: list[model.Platform] = []
    for os_name in oses:
        for architecture in architectures:
            if choice.variant:
                variants: tuple[str | None, ...] = (choice.variant,)
            else:
                listed_variants = tuple(
                    normalise(p).variant
                    for p in present
                    if p is not None and normalise(p).architecture == architecture
                )
                variants = tuple(
                    dict.fromkeys((*NODE_VARIANTS.get(architecture, (None,)), *listed_variants))
                )
            for variant in variants:
                nodes.append(normalise(model.Platform(os_name, architecture, variant)))
    return tuple(dict.fromkeys(nodes))


def evaluate_config_runs_on(config: model.ImageConfig, node: model.Platform) -> bool:
    """For an entry without a platform: containerd compares the config's os/arch."""
    if not config.os or not config.architecture:
        return False
    return evaluate_runs_on(
        model.Platform(config.os, config.architecture, config.variant or None), node
    )

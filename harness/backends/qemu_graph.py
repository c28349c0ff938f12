"""Reading QEMU's block graph into the model's terms: the chain under a root node.

Two QMP commands describe the graph (``block/qapi.c``, ``block.c``'s
``bdrv_get_xdbg_block_graph``): ``x-debug-query-block-graph`` gives nodes
and child edges (``backing``, ``file``, ``root``, job edges) but no drivers;
``query-named-block-nodes`` gives each node's driver, filename and header
backing string but not its children. They are not read atomically, so a
read is only used when both list the same nodes.

The chain is followed from a root node through each node's immediate child:
a format node's ``backing`` child, a filter's filtered child (``file`` for
copy-on-read, ``backing`` for commit_top and mirror_top). Protocol nodes,
job nodes and block backends are not part of it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from harness.observation import ChainNode

#: filter driver -> the edge to its filtered child (block/copy-on-read.c,
#: block/commit.c's bdrv_commit_top, block/mirror.c's bdrv_mirror_top, ...)
FILTER_CHILD = {
    "copy-on-read": "file",
    "commit_top": "backing",
    "mirror_top": "backing",
    "throttle": "file",
    "preallocate": "file",
    "compress": "file",
}


@dataclass
class BlockGraph:
    """One consistent read of the graph."""

    nodes: dict[str, dict] = field(default_factory=dict)              # node-name -> named-node info
    children: dict[str, dict[str, str]] = field(default_factory=dict)  # parent -> edge -> child
    backends: dict[str, str] = field(default_factory=dict)            # backend name -> root node

    def root_of(self, device: str) -> str | None:
        """The node a named BlockBackend points at (``root`` edge)."""
        return self.backends.get(device)


def parse_graph(xdbg: dict, named: list[dict]) -> BlockGraph | None:
    """Combine the two replies; None when they do not describe the same nodes."""
    by_id = {n["id"]: n for n in xdbg.get("nodes", ())}
    drivers = {n["name"] for n in by_id.values() if n["type"] == "block-driver"}
    if drivers != {n["node-name"] for n in named}:
        return None
    graph = BlockGraph(nodes={n["node-name"]: n for n in named})
    for edge in xdbg.get("edges", ()):
        parent, child = by_id.get(edge["parent"]), by_id.get(edge["child"])
        if parent is None or child is None or child["type"] != "block-driver":
            continue
        if parent["type"] == "block-driver":
            graph.children.setdefault(parent["name"], {})[edge["name"]] = child["name"]
        elif parent["type"] == "block-backend" and edge["name"] == "root" and parent["name"]:
            graph.backends[parent["name"]] = child["name"]
    return graph


def next_in_chain(graph: BlockGraph, name: str) -> str | None:
    """The immediate backing (or filtered) child of a node."""
    info = graph.nodes.get(name, {})
    edges = graph.children.get(name, {})
    edge = FILTER_CHILD.get(info.get("drv", ""), "backing")
    return edges.get(edge)


def image_filename(graph: BlockGraph, name: str) -> str:
    """A format node's image file: its protocol child's filename (the node's own
    filename turns into a ``json:{...}`` description once its backing differs from
    what its header names)."""
    protocol = graph.children.get(name, {}).get("file")
    info = graph.nodes.get(protocol or name) or graph.nodes[name]
    return str(info.get("file", ""))


def chain_from(graph: BlockGraph, root: str | None,
               to_case: Callable[[str], str] = lambda s: s) -> list[ChainNode]:
    """The chain under ``root``, top first, filters included; paths mapped by ``to_case``."""
    names: list[str] = []
    name = root
    while name is not None and name in graph.nodes and name not in names:
        names.append(name)
        name = next_in_chain(graph, name)
    chain: list[ChainNode] = []
    below_filename = ""
    for name in reversed(names):
        info = graph.nodes[name]
        driver = info.get("drv", "")
        read_only = bool(info.get("ro"))
        if driver in FILTER_CHILD:
            chain.append(ChainNode(name, driver, below_filename, None, read_only))
            continue
        backing = (info.get("image") or {}).get("backing-filename")
        below_filename = to_case(image_filename(graph, name))
        chain.append(ChainNode(name, driver, below_filename,
                               to_case(backing) if backing is not None else None, read_only))
    chain.reverse()
    return chain


def filters_above(graph: BlockGraph, name: str) -> list[str]:
    """The filter nodes stacked above ``name`` (nearest first), each filtering the one below."""
    out: list[str] = []
    while True:
        above = [parent for parent, edges in graph.children.items()
                 if parent not in out and parent != name
                 and graph.nodes.get(parent, {}).get("drv") in FILTER_CHILD
                 and edges.get(FILTER_CHILD[graph.nodes[parent]["drv"]]) == name]
        if not above:
            return out
        name = sorted(above)[0]
        out.append(name)

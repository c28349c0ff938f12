import pytest

from harness.case import Case, Command, Image, Write

M = 1 << 20


def chain_case(n=6, commands=(), drive="drive0", writes=None, size=M):
    """node0 (raw) <- node1 <- ... <- node{n-1}, odd nodes written with their index."""
    imgs = [Image("node0", size, 65536, format="raw", filename="node0.raw")]
    for i in range(1, n):
        w = writes.get(i, ()) if writes is not None else ((Write(i * 65536, 131072, i),) if i % 2 else ())
        imgs.append(Image(f"node{i}", size, 65536, tuple(w)))
    cmds = tuple(c if isinstance(c, Command) else Command(c[0], c[1] if len(c) > 1 else {})
                 for c in commands)
    return Case(tuple(imgs), cmds, drive=drive)


@pytest.fixture
def make_case():
    return chain_case

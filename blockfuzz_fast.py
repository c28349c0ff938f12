"""The compiled model: the hot modules compiled with Cython, used when current.

``make fast`` (``python -m blockfuzz_fast``) compiles the model (every module
of ``reference`` but its ``__init__``) and the harness modules every run goes
through (:data:`MODULES`) from their unchanged Python sources, into
``.fast/<python tag>/``, with a digest of the sources next to them. Beside
ten of the model's modules, the model's backend, the choice sources and pct's
learned grammar, Cython declarations (``reference/*.pxd``,
``harness/backends/reference.pxd``, ``harness/choices.pxd``,
``harness/learning.pxd``, which Python never reads) make the node, edge, job,
event-loop, image-data, choice-source and grammar classes extension types,
with C struct fields instead of instance dicts, and
the drain walks and chain helpers ``cpdef`` functions; the sources' own
annotations type the arguments. The
``reference``, ``harness`` and ``harness.backends`` packages call
:func:`extend` as they are imported: when the compiled modules were built
from the sources as they are now, their directory goes first in the
package's ``__path__`` and Python imports them instead of the ``.py`` files.
Compiled from the same code, the model takes the same decisions, so every
case, schedule and finding replays the same on either
(``tests/test_fast.py`` checks it).

``BLOCKFUZZ_PURE=1`` keeps the pure Python modules (the test suite's
coverage and atheris's instrumentation need them); ``BLOCKFUZZ_FAST_DIR``
builds and looks elsewhere. A source edited after a build makes every compiled
module stale, whichever package it is in: they are then all left alone, with a
one-line warning.
"""
from __future__ import annotations

import hashlib
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
MANIFEST = "SOURCES.sha256"
MODULES: dict[str, tuple[str, ...]] = {
    "reference": ("bugs", "commit", "data", "drain", "errors", "filename", "graph", "job", "loop",
                  "machine", "qmp", "stream"),
    "harness": ("check", "choices", "generate", "learning", "observation", "oracle"),
    "harness.backends": ("reference",),
}
_warned: set[str] = set()


def build_dir() -> str:
    """Where the compiled modules of this Python go."""
    return os.environ.get("BLOCKFUZZ_FAST_DIR") or os.path.join(ROOT, ".fast", sys.implementation.cache_tag)


def source_path(package: str, module: str) -> str:
    return os.path.join(ROOT, *package.split("."), module + ".py")


def digest() -> str:
    """SHA-256 over the sources of every compiled module, names included, and over the
    Cython declarations (``.pxd``) that some of them have beside them. One digest for
    the whole build: the modules of one package use the extension types of another
    (the backend's ``cimport`` of the machine), so a build is current, or stale, as a
    whole; a package whose own sources are unchanged but whose compiled modules were
    built against an older model would not load beside that model's Python sources."""
    h = hashlib.sha256()
    for package, modules in MODULES.items():
        for module in modules:
            h.update(f"{package}.{module}".encode() + b"\0")
            source = source_path(package, module)
            for path in (source, source[:-3] + ".pxd"):
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        h.update(f.read())
    return h.hexdigest()


def extend(package: str, path: list[str]) -> None:
    """Put ``package``'s compiled modules first in its ``__path__`` when the build is
    current (:func:`digest`)."""
    if os.environ.get("BLOCKFUZZ_PURE") or package not in MODULES:
        return
    where = os.path.join(build_dir(), *package.split("."))
    try:
        with open(os.path.join(where, MANIFEST)) as f:
            built = f.read().strip()
    except OSError:
        return
    if built != digest():
        if not _warned:
            _warned.add("stale")
            print(f"blockfuzz: the compiled modules in {build_dir()} are older than the "
                  "sources; using the Python sources (run `make fast` to compile again)",
                  file=sys.stderr)
        return
    path.insert(0, where)


def active() -> bool:
    """True when the model in use is the compiled one."""
    module = sys.modules.get("reference.machine")
    return module is not None and not module.__file__.endswith(".py")


def describe() -> str:
    return "compiled (Cython)" if active() else "pure Python"


def build(out: str | None = None, jobs: int | None = None) -> str:
    """Compile :data:`MODULES` into ``out`` (default :func:`build_dir`); returns ``out``."""
    import tempfile

    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    out = out or build_dir()
    jobs = jobs or os.cpu_count() or 1
    extensions = [Extension(f"{package}.{module}", [source_path(package, module)])
                  for package, modules in MODULES.items() for module in modules]
    with tempfile.TemporaryDirectory(prefix="blockfuzz-fast-") as tmp:
        compiled = cythonize(extensions, build_dir=tmp, quiet=True, nthreads=jobs,
                             compiler_directives={"language_level": 3, "binding": False})
        dist = Distribution({"ext_modules": compiled, "script_name": "blockfuzz_fast",
                             "script_args": ["-q", "build_ext", "--build-lib", out,
                                             "--build-temp", tmp, "--parallel", str(jobs)]})
        dist.parse_command_line()
        dist.run_commands()
    built = digest()
    for package in MODULES:
        where = os.path.join(out, *package.split("."))
        os.makedirs(where, exist_ok=True)
        _drop_strays(package, where)
        with open(os.path.join(where, MANIFEST), "w") as f:
            f.write(built + "\n")
    return out


def _drop_strays(package: str, where: str) -> None:
    """Remove compiled modules of ``package`` that :data:`MODULES` no longer lists (an
    older build's): Python would import them ahead of their sources."""
    from importlib.machinery import EXTENSION_SUFFIXES
    for name in os.listdir(where):
        suffix = next((s for s in EXTENSION_SUFFIXES if name.endswith(s)), None)
        if suffix is not None and name[:-len(suffix)] not in MODULES[package]:
            os.remove(os.path.join(where, name))


def main() -> int:
    """``python -m blockfuzz_fast`` (``make fast``): compile, or say in one line why not."""
    try:
        import Cython  # noqa: F401
    except ImportError:
        print("blockfuzz_fast: Cython is not installed: pip install -e '.[fast]' "
              "(make fast does), then run this again", file=sys.stderr)
        return 2
    try:
        out = build()
    except (Exception, SystemExit) as exc:  # setuptools reports a failed compiler as either
        print(f"blockfuzz_fast: compiling failed ({exc}): it needs a C compiler and Python's "
              "headers (Debian: gcc, python3-dev); the Python sources keep working",
              file=sys.stderr)
        return 2
    print(f"compiled {sum(map(len, MODULES.values()))} modules into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

With gcc the build is profile-guided (:func:`build`): compiled once with counters,
trained on campaigns and the corpus (:func:`train`) in a child process, compiled
again for what the training did. ``python -m blockfuzz_fast --no-pgo`` compiles once.

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


#: C compiler options beside Python's own: -O3 where distributions build extensions
#: with -O2, and calls into the interpreter through its global offset table rather
#: than a PLT stub (the model calls CPython's C API on nearly every line)
#: (-O3 makes gcc doubt some of Cython's argument parsing: -Wno-maybe-uninitialized)
OPTIMIZE = ("-O3", "-fno-plt", "-fno-semantic-interposition", "-Wno-maybe-uninitialized")
#: gcc's profile-guided build: an instrumented build counts what a training workload
#: (:func:`train`) does, then the final build lays out and inlines by those counts.
#: Partial training: code the training never ran is optimized as usual, not for size.
#: Inlining by the counts makes gcc see past the end of Cython's argument arrays
#: where the code cannot go (8 false -Warray-bounds warnings; silenced).
PROFILE_GENERATE = ("-fprofile-generate", "-fprofile-update=single")
PROFILE_USE = ("-fprofile-use", "-fprofile-partial-training", "-Wno-missing-profile",
               "-Wno-array-bounds")
#: runs of each campaign in the training (6 campaigns, then the corpus 3 times)
TRAINING_RUNS = 1000


class TrainingFailed(Exception):
    """The instrumented build's training run did not finish."""


def build(out: str | None = None, jobs: int | None = None, pgo: bool | None = None) -> str:
    """Compile :data:`MODULES` into ``out`` (default :func:`build_dir`); returns ``out``.

    ``pgo`` (default: when the compiler is gcc) makes it a profile-guided build: an
    instrumented build first, :func:`train` run on it in a child process, then the
    build that is kept, optimized for what the training did (1.25x the runs/s
    of the same build without, docs/measurements.md). Only the last build is stamped
    current (:data:`MANIFEST`): an instrumented or half-done one is never imported.
    """
    import tempfile

    out = out or build_dir()
    jobs = jobs or os.cpu_count() or 1
    pgo = compiler_is_gcc() if pgo is None else pgo
    _unstamp(out)
    with tempfile.TemporaryDirectory(prefix="blockfuzz-fast-") as tmp:
        flags = OPTIMIZE
        if pgo:
            _compile(out, tmp, jobs, OPTIMIZE + PROFILE_GENERATE)
            _stamp(out)
            try:
                _train_in_child(out)
            finally:
                _unstamp(out)
            flags = OPTIMIZE + PROFILE_USE
        _compile(out, tmp, jobs, flags)
    _stamp(out)
    return out


def _compile(out: str, tmp: str, jobs: int, flags: tuple[str, ...]) -> None:
    """Cython, then the C compiler with ``flags``, every module, into ``out``. The
    objects go to ``tmp``, where an instrumented build's counts are found again by the
    build that uses them (gcc keys them by the object's path). The flags go in through
    ``CFLAGS`` and ``LDFLAGS``, not the extensions' own arguments: Cython writes those
    into the C file it generates and, reusing that file, would add them to the next
    build's."""
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    saved = {name: os.environ.get(name) for name in ("CFLAGS", "LDFLAGS")}
    try:
        for name, value in saved.items():
            os.environ[name] = " ".join(filter(None, (value, *flags)))
        extensions = [Extension(f"{package}.{module}", [source_path(package, module)])
                      for package, modules in MODULES.items() for module in modules]
        compiled = cythonize(extensions, build_dir=tmp, quiet=True, nthreads=jobs,
                             compiler_directives={"language_level": 3, "binding": False})
        dist = Distribution({"ext_modules": compiled, "script_name": "blockfuzz_fast",
                             "script_args": ["-q", "build_ext", "--build-lib", out, "--build-temp",
                                             tmp, "--parallel", str(jobs), "--force"]})
        dist.parse_command_line()
        dist.run_commands()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _stamp(out: str) -> None:
    """Mark the modules in ``out`` current: :func:`extend` puts them first from now on."""
    built = digest()
    for package in MODULES:
        where = os.path.join(out, *package.split("."))
        os.makedirs(where, exist_ok=True)
        _drop_strays(package, where)
        with open(os.path.join(where, MANIFEST), "w") as f:
            f.write(built + "\n")


def _unstamp(out: str) -> None:
    for package in MODULES:
        try:
            os.remove(os.path.join(out, *package.split("."), MANIFEST))
        except FileNotFoundError:
            pass


def compiler_is_gcc() -> bool:
    """Whether the compiler that builds extensions here is gcc (whose profile-guided
    options :func:`build` uses; clang's need a merge step in between)."""
    import subprocess
    import sysconfig

    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    try:
        version = subprocess.run(cc[:1] + ["--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "Free Software Foundation" in version and "clang" not in version


def _train_in_child(out: str) -> None:
    """Run :func:`train` on the instrumented modules in ``out``, in a child process:
    gcc writes the counts when that process exits."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "BLOCKFUZZ_PURE"}
    env["BLOCKFUZZ_FAST_DIR"] = out
    child = subprocess.run([sys.executable, "-m", "blockfuzz_fast", "--train", str(TRAINING_RUNS)],
                           cwd=ROOT, env=env, capture_output=True, text=True)
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        raise TrainingFailed(f"the profile-guided build's training run exited with "
                             f"{child.returncode}: {last}")


def train(runs: int) -> int:
    """The profile-guided build's training workload, and what it gives the compiler
    to optimize for: campaigns, not the benchmark's one case. pct and random campaigns
    of ``runs`` runs each, on the fixed model and with each seed bug put back (so the
    paths of a finding run too), each run generated, run and judged by the oracle;
    then every case of the corpus under three schedules, judged. Returns the runs."""
    from harness.backends.reference import run_case
    from harness.campaign import Budget, Campaign, Config, documented_signatures, run_campaign
    from harness.choices import RandomSource
    from harness.corpus import iter_cases, judge

    done = 0
    for engine in ("pct", "random"):
        for bugs in ((), ("stream-prepare-no-drain",), ("stream-prepare-ref-only",)):
            campaign = Campaign(Config(engine=engine, bugs=bugs, budget=Budget(runs=runs),
                                       minimize=False, known=documented_signatures()))
            run_campaign(campaign)
            done += campaign.stats.runs
    for case in iter_cases(os.path.join(ROOT, "corpus")):
        for seed in range(3):
            judge(case, run_case(case, RandomSource(seed)))
            done += 1
    return done


def _drop_strays(package: str, where: str) -> None:
    """Remove compiled modules of ``package`` that :data:`MODULES` no longer lists (an
    older build's): Python would import them ahead of their sources."""
    from importlib.machinery import EXTENSION_SUFFIXES
    for name in os.listdir(where):
        suffix = next((s for s in EXTENSION_SUFFIXES if name.endswith(s)), None)
        if suffix is not None and name[:-len(suffix)] not in MODULES[package]:
            os.remove(os.path.join(where, name))


def _train_main(args: list[str]) -> int:
    """``--train RUNS``: the child of :func:`_train_in_child`."""
    if len(args) != 1 or not args[0].isdigit():
        print(f"blockfuzz_fast: --train takes a number of runs, got {' '.join(args)!r}",
              file=sys.stderr)
        return 2
    import reference.machine  # noqa: F401  (what active() looks at)
    if not active():
        print("blockfuzz_fast: the instrumented modules did not load", file=sys.stderr)
        return 2
    print(f"trained on {train(int(args[0]))} runs")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m blockfuzz_fast [--no-pgo]`` (``make fast``): compile, or say in one
    line why not. ``--train RUNS`` is the profile-guided build's child (:func:`train`)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--train"]:
        return _train_main(argv[1:])
    if argv not in ([], ["--no-pgo"]):
        print(f"blockfuzz_fast: unknown arguments {' '.join(argv)!r}: the only option is "
              "--no-pgo", file=sys.stderr)
        return 2
    try:
        import Cython  # noqa: F401
    except ImportError:
        print("blockfuzz_fast: Cython is not installed: pip install -e '.[fast]' "
              "(make fast does), then run this again", file=sys.stderr)
        return 2
    try:
        pgo = compiler_is_gcc() and not argv
        out = build(pgo=pgo)
    except TrainingFailed as exc:
        print(f"blockfuzz_fast: {exc}; `python -m blockfuzz_fast --no-pgo` compiles "
              "without the training", file=sys.stderr)
        return 2
    except (Exception, SystemExit) as exc:  # setuptools reports a failed compiler as either
        print(f"blockfuzz_fast: compiling failed ({exc}): it needs a C compiler and Python's "
              "headers (Debian: gcc, python3-dev); the Python sources keep working",
              file=sys.stderr)
        return 2
    how = "profile-guided" if pgo else "without profile"
    print(f"compiled {sum(map(len, MODULES.values()))} modules into {out} ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

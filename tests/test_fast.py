"""The compiled model (``make fast``): used only when current, and the same runs as the sources."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

import blockfuzz_fast

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: every run's replies, events, chain, data, choices, cells and verdict, hashed:
#: generated cases with and without each seed bug, then the corpus
DIGEST = """
import hashlib, json, sys
import blockfuzz_fast
from harness.backends.reference import run_case
from harness.choices import RandomSource
from harness.corpus import iter_cases, judge
from harness.generate import run_generated
from harness.learning import GrammarModel, LearnedPCTSource
h = hashlib.sha256()
def add(obs, out):
    f = obs.finding
    h.update(json.dumps([obs.replies, obs.events, [vars(c) for c in obs.chain or ()], obs.data,
                         obs.choices, sorted(obs.extra.get("cells", ())), f and [f.kind, f.where, f.message],
                         out.kind, out.where, out.message], sort_keys=True, default=str).encode())
for bugs in ((), ("stream-prepare-no-drain",), ("stream-prepare-ref-only",)):
    for seed in range(int(sys.argv[1])):
        case, obs, out = run_generated(RandomSource(seed), bugs)
        add(obs, out)
model = GrammarModel()
for seed in range(int(sys.argv[1]) // 4):       # pct's sources and its grammar, learning
    source = LearnedPCTSource(seed, 1 + seed % 3, 10, model)
    case, obs, out = run_generated(source, ("stream-prepare-no-drain",))
    add(obs, out)
    model.learn(source.generated, 0.01 if seed % 5 == 0 else None)
for case in iter_cases("corpus"):
    obs = run_case(case)
    add(obs, judge(case, obs))
print(blockfuzz_fast.describe(), h.hexdigest())
"""


def digest_run(env_change: dict, runs: int) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BLOCKFUZZ_PURE"}
    env.update(env_change)
    out = subprocess.run([sys.executable, "-c", DIGEST, str(runs)], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return " ".join(out[:-1]), out[-1]


def can_compile() -> bool:
    return importlib.util.find_spec("Cython") is not None and shutil.which(
        sysconfig.get_config_var("CC").split()[0] if sysconfig.get_config_var("CC") else "cc") is not None


@pytest.mark.skipif(not can_compile(), reason="needs Cython and a C compiler (pip install -e '.[fast]')")
def test_the_compiled_model_makes_the_same_runs_as_the_sources(tmp_path, monkeypatch, capsys):
    built = str(tmp_path / "fast")
    monkeypatch.setenv("BLOCKFUZZ_FAST_DIR", built)
    assert blockfuzz_fast.main([]) == 0
    pgo = blockfuzz_fast.compiler_is_gcc()
    how = "profile-guided" if pgo else "without profile"
    assert capsys.readouterr().out == f"compiled 19 modules into {built} ({how})\n"
    if "-g" in (sysconfig.get_config_var("CFLAGS") or "").split():
        # the compiler's options, as gcc records them with the debug information: the
        # kept build used the counts and has none of its own (once it was still the
        # instrumented build, Cython having carried that build's flags over)
        for so in sorted(tmp_path.glob("fast/**/*.so")):
            options = _compiler_options(so)
            assert ("-fprofile-use" in options) == pgo, so.name
            assert "-fprofile-generate" not in options, so.name
    compiled = digest_run({"BLOCKFUZZ_FAST_DIR": built}, 400)
    pure = digest_run({"BLOCKFUZZ_FAST_DIR": built, "BLOCKFUZZ_PURE": "1"}, 400)
    assert compiled[0] == "compiled (Cython)" and pure[0] == "pure Python"
    assert compiled[1] == pure[1]


def _compiler_options(so) -> str:
    """The command-line options gcc wrote into ``so``'s debug information."""
    import re
    found = re.search(rb"GNU C[0-9]* [0-9.]+ ([^\0]*)", so.read_bytes())
    assert found, f"{so.name}: no compiler options recorded"
    return found.group(1).decode()


def manifest(tmp_path, package: str, text: str) -> str:
    where = tmp_path.joinpath(*package.split("."))
    where.mkdir(parents=True)
    (where / blockfuzz_fast.MANIFEST).write_text(text)
    return str(where)


def test_a_current_build_goes_first_on_the_package_path(tmp_path, monkeypatch):
    where = manifest(tmp_path, "reference", blockfuzz_fast.digest() + "\n")
    monkeypatch.setenv("BLOCKFUZZ_FAST_DIR", str(tmp_path))
    monkeypatch.delenv("BLOCKFUZZ_PURE")
    path = ["/src/reference"]
    blockfuzz_fast.extend("reference", path)
    assert path == [where, "/src/reference"]


def test_a_stale_build_is_left_alone_with_one_warning(tmp_path, monkeypatch, capsys):
    manifest(tmp_path, "harness", "0" * 64 + "\n")
    monkeypatch.setenv("BLOCKFUZZ_FAST_DIR", str(tmp_path))
    monkeypatch.delenv("BLOCKFUZZ_PURE")
    monkeypatch.setattr(blockfuzz_fast, "_warned", set())
    path = ["/src/harness"]
    blockfuzz_fast.extend("harness", path)
    blockfuzz_fast.extend("harness", path)
    assert path == ["/src/harness"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "older than the sources" in err[0] and "make fast" in err[0]


def test_no_build_or_blockfuzz_pure_keeps_the_sources(tmp_path, monkeypatch):
    manifest(tmp_path, "reference", blockfuzz_fast.digest() + "\n")
    monkeypatch.setenv("BLOCKFUZZ_FAST_DIR", str(tmp_path))
    path = ["/src/reference"]
    blockfuzz_fast.extend("reference", path)          # BLOCKFUZZ_PURE=1 (tests/conftest.py)
    monkeypatch.delenv("BLOCKFUZZ_PURE")
    blockfuzz_fast.extend("harness", path)            # nothing built for harness
    assert path == ["/src/reference"]


def test_the_suite_itself_runs_the_python_sources():
    import reference.machine
    assert reference.machine.__file__.endswith(".py") and blockfuzz_fast.describe() == "pure Python"


def test_without_cython_make_fast_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "Cython", None)      # import Cython now fails
    assert blockfuzz_fast.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Cython is not installed" in err and ".[fast]" in err


def test_a_failed_compile_is_one_line_and_exit_2(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise SystemExit("error: command 'gcc' failed: No such file or directory")
    monkeypatch.setattr(blockfuzz_fast, "build", broken)
    assert blockfuzz_fast.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "command 'gcc' failed" in err and "python3-dev" in err


def test_the_build_digest_covers_the_cython_declarations(tmp_path, monkeypatch):
    """Editing a .pxd beside a module (its extension types) makes the build stale,
    as editing the module does; a module without one is hashed alone."""
    package = tmp_path / "reference"
    package.mkdir()
    for module in blockfuzz_fast.MODULES["reference"]:
        (package / f"{module}.py").write_text(f"# {module}\n")
    (package / "graph.pxd").write_text("cdef class BlockDriverState:\n    pass\n")
    monkeypatch.setattr(blockfuzz_fast, "ROOT", str(tmp_path))
    before = blockfuzz_fast.digest()
    (package / "graph.pxd").write_text("cdef class BlockDriverState:\n    cdef public object m\n")
    edited = blockfuzz_fast.digest()
    (package / "graph.pxd").unlink()
    without = blockfuzz_fast.digest()
    assert len({before, edited, without}) == 3


def test_a_change_in_one_package_makes_the_whole_build_stale(tmp_path, monkeypatch, capsys):
    """The backend's compiled module uses the model's extension types: after an edit of
    the model, it must not load beside the model's Python sources (it failed to import,
    with a traceback, when each package's build was judged on its own sources)."""
    for package, modules in blockfuzz_fast.MODULES.items():
        where = tmp_path.joinpath("src", *package.split("."))
        where.mkdir(parents=True)
        for module in modules:
            (where / f"{module}.py").write_text(f"# {module}\n")
    monkeypatch.setattr(blockfuzz_fast, "ROOT", str(tmp_path / "src"))
    built = tmp_path / "built"
    for package in blockfuzz_fast.MODULES:
        manifest(built, package, blockfuzz_fast.digest() + "\n")
    monkeypatch.setenv("BLOCKFUZZ_FAST_DIR", str(built))
    monkeypatch.delenv("BLOCKFUZZ_PURE")
    monkeypatch.setattr(blockfuzz_fast, "_warned", set())
    (tmp_path / "src" / "reference" / "machine.py").write_text("# machine, edited\n")
    paths = {package: [f"/src/{package}"] for package in blockfuzz_fast.MODULES}
    for package, path in paths.items():
        blockfuzz_fast.extend(package, path)
    assert paths == {package: [f"/src/{package}"] for package in blockfuzz_fast.MODULES}
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "older than the sources" in err[0]


def _declared_fields(pxd: str, inherited: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """cdef class name -> the fields its ``cdef public`` lines declare, with those of
    its base class when ``inherited`` (class name -> fields, from other .pxd) has it."""
    fields: dict[str, set[str]] = {}
    current = None
    for line in open(pxd):
        if line.startswith("cdef class "):
            head = line.split(None, 2)[2].rstrip().rstrip(":")
            current, _, base = head.partition("(")
            fields[current] = set((inherited or {}).get(base.rstrip(")"), ()))
        elif current and line.startswith("    cdef public "):
            names = line.split(None, 3)[3]      # after 'cdef public <type>'
            fields[current] |= {n.strip() for n in names.split(",")}
        elif line.strip() and not line.startswith(" "):
            current = None
    return fields


def _assigned_on_self(source: str) -> dict[str, set[str]]:
    """class name -> every ``self.x`` its methods assign."""
    import ast
    out: dict[str, set[str]] = {}
    for cls in ast.parse(open(source).read()).body:
        if isinstance(cls, ast.ClassDef):
            names = out.setdefault(cls.name, set())
            for node in ast.walk(cls):
                targets = (node.targets if isinstance(node, ast.Assign) else
                           [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
                for t in targets:
                    for sub in ast.walk(t):
                        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) \
                                and sub.value.id == "self":
                            names.add(sub.attr)
    return out


def test_every_attribute_an_extension_type_sets_is_declared():
    """A compiled extension type has no instance dict: an attribute its Python
    source sets but its .pxd does not declare is an AttributeError in `make fast`
    builds only. Name it here instead."""
    import glob
    checked = 0
    pxds = sorted(glob.glob(os.path.join(REPO, "reference", "*.pxd")) +
                  glob.glob(os.path.join(REPO, "harness", "*.pxd")) +
                  glob.glob(os.path.join(REPO, "harness", "backends", "*.pxd")))
    every: dict[str, set[str]] = {}
    for pxd in pxds:
        every.update(_declared_fields(pxd))
    for pxd in pxds:
        assigned = _assigned_on_self(pxd[:-4] + ".py")
        for cls, fields in _declared_fields(pxd, every).items():
            missing = assigned.get(cls, set()) - fields
            assert not missing, f"{os.path.basename(pxd)}: {cls} sets {sorted(missing)} without declaring them"
            checked += 1
    # the model's node, edge, image data, jobs, loop and machine types; the choice sources,
    # the learned grammar and the recent shares
    assert checked >= 19


def test_a_build_removes_compiled_modules_no_longer_listed(tmp_path):
    """A module dropped from MODULES keeps its old extension file otherwise, and Python
    imports that file ahead of the source once the manifest matches again."""
    from importlib.machinery import EXTENSION_SUFFIXES
    suffix = EXTENSION_SUFFIXES[0]
    for name in ("case" + suffix, "oracle" + suffix, blockfuzz_fast.MANIFEST, "notes.txt"):
        (tmp_path / name).write_text("")
    blockfuzz_fast._drop_strays("harness", str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [blockfuzz_fast.MANIFEST, "notes.txt", "oracle" + suffix])


def test_the_training_runs_six_campaigns_and_the_corpus(monkeypatch):
    """What the profile-guided build optimizes for: pct and random campaigns, on the
    fixed model and with each seed bug, then the corpus under three schedules."""
    from harness.corpus import iter_cases
    corpus = sum(1 for _ in iter_cases(os.path.join(REPO, "corpus")))
    assert blockfuzz_fast.train(3) == 6 * 3 + 3 * corpus


def test_training_on_a_build_that_does_not_load_fails_in_one_line(tmp_path):
    """The child checks that it runs the instrumented modules: counts of the Python
    sources would be no profile at all."""
    with pytest.raises(blockfuzz_fast.TrainingFailed) as failed:
        blockfuzz_fast._train_in_child(str(tmp_path))
    assert str(failed.value) == ("the profile-guided build's training run exited with 2: "
                                 "blockfuzz_fast: the instrumented modules did not load")


def test_a_failed_training_leaves_no_build_marked_current(tmp_path, monkeypatch, capsys):
    """An instrumented build must never be imported as the compiled model (it is slower
    and writes its counts on every exit): the manifest comes only with the last build.
    The compiler is left out here (tests/test_fast.py's first test runs it); the
    training runs for real, on modules that are not there."""
    out = tmp_path / "fast"
    for package in blockfuzz_fast.MODULES:
        manifest(out, package, blockfuzz_fast.digest() + "\n")     # an earlier build's
    compiled = []
    monkeypatch.setattr(blockfuzz_fast, "_compile", lambda o, t, j, flags: compiled.append(flags))
    monkeypatch.setattr(blockfuzz_fast, "build_dir", lambda: str(out))
    monkeypatch.setattr(blockfuzz_fast, "compiler_is_gcc", lambda: True)
    monkeypatch.setitem(sys.modules, "Cython", sys.modules.get("Cython") or object())
    assert blockfuzz_fast.main([]) == 2
    assert compiled == [blockfuzz_fast.OPTIMIZE + blockfuzz_fast.PROFILE_GENERATE]
    assert not list(out.rglob(blockfuzz_fast.MANIFEST))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did not load" in err and "--no-pgo" in err


def test_no_pgo_compiles_once_and_marks_it_current(tmp_path, monkeypatch, capsys):
    out = tmp_path / "fast"
    compiled = []
    monkeypatch.setattr(blockfuzz_fast, "_compile", lambda o, t, j, flags: compiled.append(flags))
    monkeypatch.setattr(blockfuzz_fast, "build_dir", lambda: str(out))
    monkeypatch.setitem(sys.modules, "Cython", sys.modules.get("Cython") or object())
    assert blockfuzz_fast.main(["--no-pgo"]) == 0
    assert compiled == [blockfuzz_fast.OPTIMIZE]
    assert sorted(p.parent.name for p in out.rglob(blockfuzz_fast.MANIFEST)) == [
        "backends", "harness", "reference"]
    assert capsys.readouterr().out == f"compiled 19 modules into {out} (without profile)\n"


def test_train_without_a_number_of_runs_is_one_line_and_exit_2(capsys):
    assert blockfuzz_fast.main(["--train", "many"]) == 2
    assert capsys.readouterr().err == ("blockfuzz_fast: --train takes a number of runs, "
                                       "got 'many'\n")


def test_unknown_arguments_are_one_line_and_exit_2(capsys):
    assert blockfuzz_fast.main(["--fast"]) == 2
    err = capsys.readouterr().err
    assert err == "blockfuzz_fast: unknown arguments '--fast': the only option is --no-pgo\n"

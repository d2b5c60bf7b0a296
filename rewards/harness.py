"""The test harness that runs inside the code sandbox (shipped as the sandbox's ``main.py``; stdlib only).

It reads ``job.marshal`` (``form``: asserts / check / stdio, the candidate ``code``, the ``tests``, the
``entry_point``, optional ``setup`` code run before each test) and ``.nonce`` (a per-run secret written by the caller), deletes both, runs the
candidate, then the tests, and appends ``<nonce> <test index> pass`` to ``.signal`` after each test that
it *saw* finish. The caller counts only those lines: an exit status, printed text or a crash proves
nothing. Against the reward hacks an RL policy finds:

* ``exit()``, ``sys.exit``, ``raise SystemExit`` (module level or inside the function) are caught like any
  failure; ``os._exit`` or killing its own process ends the harness before it can sign, so the remaining
  tests score 0.
* Text the candidate prints never reaches ``.signal`` (its stdout/stderr go to /dev/null in the asserts
  and check forms), and the secret is not in any file, source text or Python object while candidate code
  runs: it waits in an OS pipe and exists in memory only while a pass is being signed.
* Tests run with a pristine copy of the builtins, with stdlib modules the tests name imported by the
  harness before the candidate (their attributes restored before every test, so ``math.isclose =
  lambda *a: True`` is undone), and with ``check`` / the entry point captured as soon as they are
  defined, so redefining them later changes nothing. ``assert`` raises the interpreter's own
  AssertionError whatever the candidate rebinds, and any exception fails the test.
* Values returned by the candidate's functions must be honest: an object whose comparison, truth,
  length, hashing or conversion methods are written outside the standard library (an "always equal"
  object) fails the test.

Out of scope, because tests run in the candidate's interpreter: a program that deliberately introspects
that interpreter (``gc`` heap walks, frames of the harness, its open file descriptors, ``ctypes``) can
find the pipe or patch the harness and forge a pass; and values produced lazily (generators, methods of
the candidate's own classes) are not checked for honesty. Closing these needs the tests evaluated in a
separate process on plain data, which breaks tests that build the candidate's own classes or check
arguments mutated in place.
"""

import builtins
import marshal  # built in: json would add ~13 ms of imports to every program
import os
import sys

CANDIDATE_FILE = "solution.py"
_GUARDED = (
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__", "__len__", "__hash__",
    "__float__", "__int__", "__index__", "__complex__", "__abs__", "__round__", "__str__", "__format__",
    "__contains__", "__iter__", "__getitem__", "__add__", "__radd__", "__sub__", "__rsub__", "__getattr__",
    "__getattribute__",
)  # fmt: skip
_STDLIB = os.path.dirname(os.__file__)


def _written_outside_stdlib(cls: type) -> bool:
    for klass in cls.__mro__:
        for name in _GUARDED:
            code = getattr(klass.__dict__.get(name), "__code__", None)
            if code is not None and not code.co_filename.startswith(_STDLIB):
                return True
    return False


def honest(value, budget: int = 10_000) -> bool:
    """False when ``value`` (or an element of a list/tuple/set/dict in it) lies about comparisons.

    Verdicts are cached per type within one call only: the candidate could add ``__eq__`` to one of
    its classes between calls, but no candidate code runs during this walk.
    """
    stack, seen, verdicts = [value], 0, {}
    while stack and seen < budget:
        item = stack.pop()
        seen += 1
        kind = type(item)
        if kind not in verdicts:
            verdicts[kind] = _written_outside_stdlib(kind)
        if verdicts[kind]:
            return False
        if type(item) in (list, tuple, set, frozenset):
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
    return True


class DishonestValue(Exception):
    pass


def guard(fn, _honest=honest):
    """``fn`` whose return values must pass ``honest`` (bound now, so rebinding the global does nothing)."""

    def guarded(*args, **kwargs):
        result = fn(*args, **kwargs)
        if not _honest(result):
            raise DishonestValue(
                f"{getattr(fn, '__name__', fn)!r} returned an object that overrides comparisons"
            )
        return result

    guarded.__name__ = getattr(fn, "__name__", "candidate")
    return guarded


class Signer:
    """Appends ``<nonce> <i> pass`` lines to ``.signal``; the nonce waits in a pipe, not in Python memory."""

    def __init__(self):
        with open(".nonce", "rb") as f:
            nonce = f.read().strip()
        os.unlink(".nonce")
        self._r, self._w = os.pipe()
        self._read, self._write = os.read, os.write  # bound before the candidate can patch ``os``
        self._write(self._w, nonce)
        self._fd = os.open(".signal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def sign(self, index: int) -> None:
        nonce = self._read(self._r, 64)
        self._write(self._w, nonce)
        self._write(self._fd, nonce + b" %d pass\n" % index)


def _silence() -> int:
    """Point fds 1 and 2 at /dev/null; return a private copy of stderr for the harness's own notes."""
    notes = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    return notes


def _note(fd: int, text: str) -> None:
    try:
        os.write(fd, (text[:300] + "\n").encode(errors="replace"))
    except OSError:
        pass


def _named_modules(sources: list[str]) -> dict:
    """Stdlib modules the tests refer to by name (``math`` in ``math.isclose``), imported now."""
    words = "".join(c if c.isalnum() or c == "_" else " " for source in sources for c in source + " ")
    names = set(words.split())
    modules = {}
    for name in sorted(names & set(getattr(sys, "stdlib_module_names", ()))):
        try:
            modules[name] = __import__(name)
        except Exception:
            continue
    return modules


def _run_candidate(code: str, ns: dict, notes: int) -> None:
    try:
        exec(compile(code, CANDIDATE_FILE, "exec"), ns)
    except BaseException as exc:  # SystemExit included: the tests still run against what was defined
        _note(notes, f"candidate: {exc!r}")
    sys.settrace(None)
    sys.setprofile(None)


def _test_namespace(ns: dict, modules: dict, pristine: dict) -> dict:
    names = {k: guard(v) if callable(v) and not isinstance(v, type) else v for k, v in ns.items()}
    names.update({k: m for k, m in modules.items() if k not in ns or type(ns[k]) is type(sys)})
    return {**names, "__builtins__": dict(pristine), "__name__": "__main__"}


def main() -> None:
    sys.modules.pop("__main__", None)  # the candidate must not reach (and patch) the harness by name
    signer = Signer()
    with open("job.marshal", "rb") as f:
        job = marshal.load(f)
    os.unlink("job.marshal")
    form, tests = job["form"], job["tests"]
    pristine = dict(builtins.__dict__)
    if form == "stdio":  # the caller compares stdout; the harness only signs a normal finish
        try:
            exec(
                compile(job["code"], CANDIDATE_FILE, "exec"),
                {"__name__": "__main__", "__builtins__": builtins},
            )
        except SystemExit as exc:
            if exc.code not in (None, 0):
                return
        sys.stdout.flush()
        signer.sign(0)
        return
    tests = tests if form == "asserts" else [tests]
    notes = _silence()
    modules = _named_modules([*tests, job.get("setup") or ""])
    saved = {name: dict(vars(module)) for name, module in modules.items()}
    restore_builtins, new_namespace, run, build, wrap = (
        builtins.__dict__,
        _test_namespace,
        exec,
        compile,
        guard,
    )
    ns = {"__name__": "__main__", "__builtins__": builtins}
    _run_candidate(job["code"], ns, notes)
    entry = ns.get(job.get("entry_point") or "")
    for index, test in enumerate(tests):
        restore_builtins.clear()  # undo builtins.exec = ..., builtins.len = ... before the harness uses them
        restore_builtins.update(pristine)
        for name, module in modules.items():
            vars(module).update(saved[name])
        test_ns = new_namespace(ns, modules, pristine)
        try:
            if job.get("setup"):  # trusted dataset code the tests rely on (MBPP's test_setup_code)
                run(build(job["setup"], "setup.py", "exec"), test_ns)
            run(build(test, f"test_{index}.py", "exec"), test_ns)
            if form == "check":
                check = test_ns["check"]
                if not callable(entry):
                    raise NameError(f"the candidate does not define {job.get('entry_point')!r}")
                check(wrap(entry))
        except BaseException as exc:
            _note(notes, f"test {index}: {exc!r}")
            continue
        signer.sign(index)


if __name__ == "__main__":
    main()

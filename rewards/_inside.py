"""The only code of ours that runs inside the code sandbox, next to the candidate (stdlib only, no secrets).

Started by ``rewards.judge`` as ``python3 -I -c <this file> FD``: FD is one end of a socket pair whose
other end the judge holds. Messages both ways are a 4-byte big-endian length and a ``marshal`` payload.
The judge first sends one of

* ``("run", code)``: run ``code`` as ``__main__`` with the real stdin/stdout/stderr (the stdin/stdout
  test form; the judge compares the output, which never enters the sandbox);
* ``("serve", code, setup)``: run the candidate, then ``setup`` (dataset code such as MBPP's
  ``test_setup_code``, which builds objects from the candidate's classes), answer ``("ready", setup_names, candidate_names)`` and serve requests: ``("call", handle,
  args, kwargs)``, ``("getattr", handle, name)``, ``("iter", handle)``, ``("next", handle)``.

Values cross as plain data (None, bool, int, float, complex, str, bytes, and tuples, lists, dicts,
sets of those); any other object stays here and crosses as an opaque handle ``(Ellipsis, n)`` that the
judge can only pass back, call, read an attribute of or iterate. Nothing here is trusted: the candidate
can read, replace or imitate every line of it, and all it gains is choosing the data it answers with.
"""

import marshal
import os
import sys

_PLAIN = (type(None), bool, int, float, complex, str, bytes)
_MAX_NODES = 200_000


class _TooLarge(Exception):
    pass


class _Exporter:
    """Plain-data copies of values; everything else becomes a handle kept alive in ``objects``."""

    def __init__(self):
        self.objects = []

    def handle(self, value):
        self.objects.append(value)
        return (Ellipsis, len(self.objects) - 1)

    def export(self, value, budget=None):
        budget = budget if budget is not None else [_MAX_NODES]
        budget[0] -= 1
        if budget[0] < 0:
            raise _TooLarge(f"the value has more than {_MAX_NODES} parts")
        kind = type(value)
        if kind in _PLAIN:
            return value
        for base, convert in _CONVERT:  # containers and subclasses of plain types cross as plain data
            if isinstance(value, base):
                return convert(self, value, budget)
        return self.handle(value)

    def resolve(self, tree):
        kind = type(tree)
        if kind is tuple and len(tree) == 2 and tree[0] is Ellipsis:
            return self.objects[tree[1]]
        if kind in (list, tuple, set, frozenset):
            return kind(self.resolve(v) for v in tree)
        if kind is dict:
            return {self.resolve(k): self.resolve(v) for k, v in tree.items()}
        return tree


def _items(exporter, iterate, value, budget):
    return [exporter.export(v, budget) for v in iterate(value)]


_CONVERT = (
    (list, lambda e, v, b: _items(e, list.__iter__, v, b)),
    (tuple, lambda e, v, b: tuple(_items(e, tuple.__iter__, v, b))),
    (dict, lambda e, v, b: {e.export(k, b): e.export(x, b) for k, x in dict.items(v)}),
    (set, lambda e, v, b: set(_items(e, set.__iter__, v, b))),
    (frozenset, lambda e, v, b: frozenset(_items(e, frozenset.__iter__, v, b))),
    (int, lambda e, v, b: int.__int__(v)),
    (float, lambda e, v, b: float.__float__(v)),
    (complex, lambda e, v, b: complex.__complex__(v)),
    (str, lambda e, v, b: str.__str__(v)),
    (bytes, lambda e, v, b: bytes.__bytes__(v)),
)


def _recv(fd):
    head = _read_exactly(fd, 4)
    return marshal.loads(_read_exactly(fd, int.from_bytes(head, "big")))


def _read_exactly(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _send(fd, message):
    data = marshal.dumps(message, 4)
    data = len(data).to_bytes(4, "big") + data
    while data:
        data = data[os.write(fd, data) :]


def _names(ns, exporter, callables_only=False):
    """Handles (or plain values) of a namespace's names; modules stay here, the judge has its own."""
    names = {}
    for name, value in list(ns.items()):
        if name.startswith("__") or type(value) is type(sys) or callables_only and not callable(value):
            continue
        try:
            names[name] = exporter.handle(value) if callable(value) else exporter.export(value)
        except Exception:  # noqa: BLE001 - too large, or an export that raises: a handle then
            names[name] = exporter.handle(value)
    return names


def _answer(exporter, request):
    """The reply to one request, as plain data."""
    kind = request[0]
    try:
        if kind == "call":
            target = exporter.objects[request[1]]
            args = [exporter.resolve(a) for a in request[2]]
            kwargs = {k: exporter.resolve(v) for k, v in request[3].items()}
            result = target(*args, **kwargs)
            changed = {}
            for i, (tree, arg) in enumerate(zip(request[2], args)):
                if type(arg) in (list, dict, set):  # arguments mutated in place are copied back
                    after = exporter.export(arg)
                    if after != tree:
                        changed[i] = after
            return ("ok", exporter.export(result), changed)
        if kind == "getattr":
            return ("ok", exporter.export(getattr(exporter.objects[request[1]], request[2])), {})
        if kind == "iter":
            return ("ok", exporter.handle(iter(exporter.objects[request[1]])), {})
        if kind == "next":
            return ("ok", exporter.export(next(exporter.objects[request[1]])), {})
        return ("raise", "ValueError", f"unknown request {kind!r}")
    except BaseException as exc:  # noqa: BLE001 - the candidate's failure is the judge's data (too large too)
        name = type(exc).__name__
        try:
            text = str(exc)[:300]
        except BaseException:  # noqa: BLE001
            text = ""
        return ("raise", name if type(name) is str else "Exception", text if type(text) is str else "")


def main():
    fd = int(sys.argv[1])
    job = _recv(fd)
    sys.modules.pop("__main__", None)
    if job[0] == "run":
        os.close(fd)
        exec(compile(job[1], "solution.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        return
    notes = os.dup(
        2
    )  # our own notes; the candidate's prints go nowhere (a flood must not hit the file limit)
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    os.close(null)
    exporter = _Exporter()
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(job[1], "solution.py", "exec"), ns)
    except BaseException as exc:  # noqa: BLE001 - SystemExit included: the tests run against what exists
        os.write(notes, f"candidate: {exc!r}\n".encode(errors="replace")[:400])
    sys.settrace(None)
    sys.setprofile(None)
    names = _names(ns, exporter, callables_only=True)
    setup_names = {}
    if job[2]:  # MBPP's test_setup_code builds its objects from the candidate's classes (task 367: Node)
        before = dict(ns)
        try:
            exec(compile(job[2], "setup.py", "exec"), ns)
        except BaseException as exc:  # noqa: BLE001
            os.write(notes, f"setup: {exc!r}\n".encode(errors="replace")[:400])
        setup_names = _names({k: v for k, v in ns.items() if k not in before or before[k] is not v}, exporter)
    _send(fd, ("ready", setup_names, names))
    while True:
        try:
            request = _recv(fd)
        except EOFError:
            return
        try:
            _send(fd, _answer(exporter, request))
        except Exception as exc:  # noqa: BLE001 - e.g. a value marshal cannot write
            _send(fd, ("raise", type(exc).__name__, str(exc)[:300]))


main()

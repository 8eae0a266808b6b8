"""Writes set_order.jsonl: programs that build and change sets, with CPython's output.

`crates/sandbox/tests/set_order.rs` runs each program in the sandbox and expects the same
stdout, so the guest's sets iterate, pop and print in CPython's order. Regenerate with CPython
3.11 (the order is CPython's since 3.5's setobject.c; 3.11 is what the tests were made with;
strings and bytes hash as in CPython run with PYTHONHASHSEED=0, which the guest reproduces):

    python3.11 crates/sandbox/tests/data/set_order.py

Programs print a digest of each set's order (hashes folded in iteration order), so a line
names the data, the way the set was built and its size; run that program with `coe run` and
CPython to see both orders.
"""

import json
import pathlib
import random
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
RNG = random.Random(17)

PRELUDE = '''
def digest(order):
    acc = 0
    for x in order:
        acc = (acc * 1000003 + hash(x)) & 0xFFFFFFFFFFFFFFFF
    return acc

def lcg(n, seed):
    out, x = [], seed
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        out.append(x)
    return out
'''

# How each kind of data is made from a size n.
DATA = {
    "ascending": "list(range(n))",
    "descending": "list(range(n, 0, -1))",
    "negative": "[-i for i in range(n)]",
    "strided": "[i * 32 for i in range(n)]",
    "sparse": "[v % (10 * n + 1) for v in lcg(n, 3)]",
    "wide": "[v - 2**63 for v in lcg(n, 5)]",
    "tuples": "[(v % 7, v % 13, v % 3) for v in lcg(n, 7)]",
    "floats": "[(v % 4096) / 8 for v in lcg(n, 11)]",
    "strings": "[f'k{v % (3 * n + 1)}' for v in lcg(n, 13)]",
    "unicode": "[chr(0xE0 + v % 40) + chr([0x20AC, 0x1F600, 0x3B1][v % 3]) * (v % 3) for v in lcg(n, 17)]",
    "bytes": "[b'%d' % (v % 997) for v in lcg(n, 19)]",
}

# How a set is built from the list xs (h is half its length).
BUILDS = {
    "set": "set(xs)",
    "add": "add_each(xs)",
    "display": "{*xs}",
    "comprehension": "{x for x in xs}",
    "copy": "set(xs).copy()",
    "from-frozenset": "set(frozenset(xs))",
    "from-dict": "set(dict.fromkeys(xs))",
    "union": "set(xs[:h]) | set(xs[h:])",
    "update": "update_twice(xs, h)",
    "discard-half": "discard_every_other(xs)",
    "difference": "set(xs) - set(xs[::3])",
    "difference-update": "difference_update(xs)",
    "intersection": "set(xs) & set(xs[::2])",
    "symmetric-difference": "set(xs[:h]) ^ set(xs[h // 2:])",
}

BUILD_HELPERS = '''
def add_each(xs):
    s = set()
    for x in xs:
        s.add(x)
    return s

def update_twice(xs, h):
    s = set(xs[:h])
    s.update(xs[h:])
    return s

def discard_every_other(xs):
    s = set(xs)
    for x in xs[::2]:
        s.discard(x)
    return s

def difference_update(xs):
    s = set(xs)
    s -= set(xs[1::2])
    return s
'''

# Every size up to 40, around each size where CPython's table grows, and some others.
SIZES = sorted(
    set(range(41))
    | {t + d for t in (77, 307, 1229) for d in (-1, 0, 1)}
    | set(RNG.sample(range(41, 2001), 6))
)


def build_program(kind):
    body = f'''
for n in {SIZES}:
    xs = {DATA[kind]}
    h = len(xs) // 2
'''
    for name, expression in BUILDS.items():
        body += f"    s = {expression}\n"
        body += f"    print({name!r}, n, len(s), digest(s))\n"
    return PRELUDE + BUILD_HELPERS + body


# Random sequences of set operations, drawn by the program itself (so it stays short): each
# operation takes the set, a small int x and a list r of small ints, and returns the set.
SEQUENCES = """
class Draw:
    def __init__(self, seed):
        self.state = seed * 2654435761 + 1

    def below(self, n):
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        return (self.state >> 33) % n

    def ints(self, top, most):
        return [self.below(top) for _ in range(self.below(most + 1))]

OPERATIONS = [
    lambda s, x, r: (s.add(x), s)[1],
    lambda s, x, r: (s.add(x), s)[1],
    lambda s, x, r: (s.discard(x), s)[1],
    lambda s, x, r: (s.pop() if s else None, s)[1],
    lambda s, x, r: (s.update(r), s)[1],
    lambda s, x, r: s.__ior__(set(r)),
    lambda s, x, r: s.__iand__(set(r + list(s)[::2])),
    lambda s, x, r: s.__isub__(set(r)),
    lambda s, x, r: s.__ixor__(set(r)),
    lambda s, x, r: s.copy(),
    lambda s, x, r: s.union(r),
    lambda s, x, r: s.difference(r),
    lambda s, x, r: s.intersection(r + list(s)),
    lambda s, x, r: s.symmetric_difference(r),
    lambda s, x, r: set(s) | frozenset(r),
    lambda s, x, r: (s.difference_update(range(200)), s)[1],
    lambda s, x, r: (s.intersection_update(r * 2 + list(s)), s)[1],
    lambda s, x, r: {*s, *r},
    lambda s, x, r: (s.clear(), s)[1] if x < 8 else s,
]

for seed in range(FIRST, FIRST + COUNT):
    draw = Draw(seed)
    s = set(draw.ints(64, 40))
    trace = 0
    for _ in range(60):
        operation = OPERATIONS[draw.below(len(OPERATIONS))]
        s = operation(s, draw.below(100) - 4, draw.ints(96, 30))
        trace = (trace * 31 + digest(s)) & 0xFFFFFFFFFFFFFFFF
    print(seed, len(s), trace, list(s))
"""


def sequence_program(first, count):
    return PRELUDE + SEQUENCES.replace("FIRST", str(first)).replace("COUNT", str(count))


# Programs from elsewhere whose output depends on set order.
EXAMPLES = {
    "mbpp-2": "print(tuple(set((3, 4, 5, 6)) & set((5, 7, 4, 10))))\n"
    "print(tuple(set((1, 2, 3, 4)) & set((5, 4, 3, 7))))\n"
    "print(tuple(set((11, 12, 14, 13)) & set((17, 15, 14, 13))))\n",
    "mbpp-111": "print(list(set.intersection(*map(set, [[12, 18, 23, 25, 45], [7, 12, 18, 24, 28], [1, 5, 8, 12, 15, 16, 18]]))))\n",
    "mbpp-193": "print(tuple(set((1, 3, 5, 2, 3, 5, 1, 1, 3))))\nprint(tuple(set((2, 3, 4, 4, 5, 6, 6, 7, 8, 8))))\n",
    "mbpp-579": "print(tuple(set((3, 4, 5, 6)) ^ set((5, 7, 4, 10))))\nprint(tuple(set((21, 11, 25, 26)) ^ set((26, 34, 21, 36))))\n",
    "mbpp-769": "a, b = [10, 15, 20, 25, 30, 35, 40], [25, 40, 35]\nprint(list(set(a) - set(b)) + list(set(b) - set(a)))\n",
    "literals": "print({30, 14, 1, 2, 3}, {5, 1}, {9, 1, 17, 25, 33})\nprint(frozenset([9, 1, 17]), set([(1, 2), (2, 1)]))\n",
    "constant-sets": "print({'red', 'green', 'blue', 'yellow', 'black', 'white'})\n"
    "print({'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k'}, {b'x', b'yy', b'zzz'})\n"
    "print({1.5, 2.5, 0.5, 3.25, -7.0}, {(1, 'a'), (2, 'b'), (3, 'c')}, {True, 2, 3.0})\n",
    "with-itself": "a = set(range(300, 0, -7))\nfor x in list(a)[::3]:\n    a.discard(x)\n"
    "print(list(a | a)[:12], list(a.union(a, [5]))[:12], list(frozenset(a) | frozenset(a))[:12])\n"
    "b = set(a)\nb &= b\nb.update([1, 9, 17, 33])\nprint(list(b)[:16])\n"
    "c = set(range(20))\nc.symmetric_difference_update(c)\nc.update([16, 8, 32, 0])\nprint(list(c))\n",
    "eq-changes-the-set": "class Key:\n    def __init__(self, s):\n        self.s = s\n"
    "    def __hash__(self):\n        return 1\n    def __eq__(self, other):\n        self.s.clear()\n        return False\n"
    "class Dies:\n    def __init__(self, s):\n        self.s = s\n    def __hash__(self):\n        return 1\n"
    "    def __del__(self):\n        self.s.add(0)\n"
    "s = set()\ns.add(Dies(s))\ns.add(Key(s))\nprint(sorted(type(x).__name__ for x in s), len(s))\n",
    "pop-order": "s = set(range(100, 0, -7))\nprint([s.pop() for _ in range(5)])\ns.clear()\ns.update([5, 6, 7, 8, 9])\nprint(s.pop(), s.pop())\n",
    "dummy-reuse": "s = {1, 9, 17}\ns.discard(1)\ns.discard(17)\ns.add(25)\nprint(s)\n",
    "dict-views": "d = dict.fromkeys([40, 8, 1, 17, 33, 2])\n"
    "print(d.keys() ^ {9, 8, 25}, d.keys() - {1}, d.keys() | [64, 0], d.keys() & {33, 17, 2})\n",
    "tuple-hash": "print(hash((1, 2)), hash(()), hash((1, (2, 3))), hash((-1,)))\n",
    "str-hash": "print(hash('abc'), hash(''), hash('\u00e9t\u00e9'), hash('\u20ac'), hash('\U0001f600'))\n"
    "print(hash(b'abc'), hash(b''), hash(memoryview(b'abc')), hash(('a', b'b')))\n"
    "print({'apple', 'banana', 'cherry', 'date'}, set('mississippi'), frozenset({'x': 1, 'y': 2}))\n",
    "iterator": "it = iter({3, 1, 2, 9})\nnext(it)\nprint(it.__length_hint__(), it.__reduce__()[1], list(it))\n"
    "s = {1, 2}\ntry:\n    for x in s:\n        s.add(x + 10)\nexcept RuntimeError as e:\n    print(e)\n",
}


def cpython_stdout(program):
    result = subprocess.run(
        # Not -I, which would ignore PYTHONHASHSEED: strings hash as CPython's with seed 0.
        [sys.executable, "-S", "-s", "-"],
        input=program,
        env={"PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def main():
    if sys.version_info[:2] != (3, 11):
        sys.exit(f"run with CPython 3.11, not {sys.version.split()[0]}")
    cases = [(f"build/{kind}", build_program(kind)) for kind in DATA]
    cases += [(f"sequences/{first}", sequence_program(first, 50)) for first in range(0, 300, 50)]
    cases += [(f"example/{name}", program) for name, program in EXAMPLES.items()]
    out = HERE / "set_order.jsonl"
    with out.open("w") as f:
        for name, program in cases:
            record = {"name": name, "program": program, "stdout": cpython_stdout(program)}
            f.write(json.dumps(record) + "\n")
    print(f"wrote {len(cases)} cases to {out} with CPython {sys.version.split()[0]}")


if __name__ == "__main__":
    main()

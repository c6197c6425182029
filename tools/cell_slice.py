"""Slice a notebook: which top-level statements of earlier cells a target cell needs.

    from cell_slice import slice_cells   # with tools/ on sys.path
    slice_cells([setup, cell1, cell2, target], 3) -> [(0, setup), (2, "...kept lines..."), (3, target)]

Used by the try-it test (``tests/test_try_it.py``: a chapter's try-it cell on top of what
it depends on) and by the full-scale runbook (``bench/runbook.py``: a chapter's heaviest
experiment under ``VANISHING_SCALE=full``), so that both run a chapter's own source,
statement for statement, without the cells they do not need. Static analysis only
(``ast``): nothing is executed here.
"""

from __future__ import annotations

import ast
import builtins
import re
from dataclasses import dataclass, field

__all__ = ["slice_cells"]


# ---------------------------------------------------------------------------------------------------------------
# Which top-level statements before the target cell (a try-it cell, a heaviest experiment) it needs.
#
# Each top-level statement gets a summary: the names it may bind (`defs`), the names it surely binds (`kills`:
# an earlier binding of those is dead unless the statement reads it first), the names whose objects it may
# change in place (`mutates`: `a[k] = v`, `a.x = v`, `a += v`, `a[k].append(v)`, `f(a)` for a function f but
# not `ax.plot(a)`, or a call of a function whose body changes a global that way), and the names it reads
# before binding them itself (`uses`; a loop's own variables are not uses). A function or
# class contributes its free names only (not its parameters or locals), at its definition and again wherever
# it is referenced, so that a global it reads which is bound after the `def` is found too.
# Walking backwards from the try-it cell, a statement is included when it may bind or change a needed name;
# then needed = (needed - kills) | uses.
# ---------------------------------------------------------------------------------------------------------------

#: Functions that change none of their arguments (an expression statement calling them changes nothing).
PURE_CALLS = frozenset(dir(builtins)) - {"setattr", "delattr", "exec", "eval", "next", "globals", "locals", "vars"} | {"display"}

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp, ast.SetComp, ast.DictComp,
           ast.GeneratorExp)


def _target_names(target: ast.AST) -> set[str]:
    """Names a binding target binds (``a``, ``a, (b, *c)``); subscripts and attributes bind none."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return set().union(*(_target_names(e) for e in target.elts))
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return set()


def _base_name(node: ast.AST) -> str | None:
    """The name an attribute/subscript/call chain starts from: ``acc`` for ``acc[k].x.append``."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call, ast.Starred)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _pattern_names(pattern: ast.AST) -> set[str]:
    """Names a ``match`` pattern captures."""
    names = set()
    for node in ast.walk(pattern):
        for attr in ("name", "rest"):
            value = getattr(node, attr, None)
            if isinstance(value, str):
                names.add(value)
    return names


@dataclass
class Scope:
    """What a function, lambda, class or comprehension needs from the module: free names, globals it changes."""

    free: set[str] = field(default_factory=set)
    mutates: set[str] = field(default_factory=set)


def _scope(node: ast.AST, imported: set[str]) -> Scope:
    """Free names of a nested scope (the names it reads from outside), and the outside names it changes."""
    bound: set[str] = set()
    declared: set[str] = set()  # global / nonlocal: they live outside
    loads: set[str] = set()
    mutated: set[str] = set()
    inner: list[Scope] = []

    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        a = node.args
        for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
            if arg is not None:
                bound.add(arg.arg)
        body = node.body if isinstance(node.body, list) else [node.body]
    elif isinstance(node, ast.ClassDef):
        body = node.body
    else:  # comprehension: the generators' targets are local, the first iterable is read outside (a load either way)
        for gen in node.generators:
            bound |= _target_names(gen.target)
        body = [node.elt] if not isinstance(node, ast.DictComp) else [node.key, node.value]
        body = [*body, *node.generators]

    def visit(n: ast.AST) -> None:
        if isinstance(n, _SCOPES) and n is not node:
            # a nested scope: its decorators, defaults, bases and annotations are evaluated here
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(n.name)
                outer = [*n.decorator_list]
                if isinstance(n, ast.ClassDef):
                    outer += [*n.bases, *(k.value for k in n.keywords)]
                else:
                    outer += [*n.args.defaults, *(d for d in n.args.kw_defaults if d is not None)]
                    outer += [x.annotation for x in (*n.args.posonlyargs, *n.args.args, *n.args.kwonlyargs,
                                                     n.args.vararg, n.args.kwarg) if x is not None and x.annotation]
                    outer += [n.returns] if n.returns else []
                for o in outer:
                    visit(o)
            elif isinstance(n, ast.Lambda):
                for d in (*n.args.defaults, *(d for d in n.args.kw_defaults if d is not None)):
                    visit(d)
            inner.append(_scope(n, imported))
            return
        if isinstance(n, (ast.Global, ast.Nonlocal)):
            declared.update(n.names)
        elif isinstance(n, ast.Name):
            (loads if isinstance(n.ctx, ast.Load) else bound).add(n.id)
            if isinstance(n.ctx, ast.Del):
                mutated.add(n.id)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in n.names if a.name != "*")
        elif isinstance(n, ast.ExceptHandler) and n.name:
            bound.add(n.name)
        elif isinstance(n, ast.match_case):
            bound.update(_pattern_names(n.pattern))
        elif isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete, ast.For, ast.AsyncFor)):
            targets = n.targets if isinstance(n, (ast.Assign, ast.Delete)) else [n.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, (ast.Subscript, ast.Attribute)) and _base_name(sub):
                        mutated.add(_base_name(sub))
            if isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name):
                loads.add(n.target.id)
                mutated.add(n.target.id)
        elif isinstance(n, ast.Expr) and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Attribute):
            base = _base_name(n.value.func.value)  # a method call on a global (not on a module): it changes it
            if base and base not in imported:
                mutated.add(base)
        for child in ast.iter_child_nodes(n):
            visit(child)

    for stmt in body:
        visit(stmt)
    local = bound - declared
    if isinstance(node, ast.ClassDef):  # methods do not see the class body's names; the class body reads its own
        free = (loads - local) | set().union(*(s.free for s in inner))
        outside_mutated = (mutated - local) | set().union(*(s.mutates for s in inner))
    else:
        free = (loads | set().union(*(s.free for s in inner))) - local
        outside_mutated = (mutated | set().union(*(s.mutates for s in inner))) - local
    # a global declared and assigned here is changed for everyone
    outside_mutated |= declared & bound
    return Scope(free=free, mutates=outside_mutated)


def _call_mutates(call: ast.Call, imported: set[str]) -> set[str]:
    """Names an expression statement ``call`` may change: the receiver of a method (``acc[k].append(v)``: acc),
    unless it is a module or anything else imported; and, for a call of a function (``train(model)``,
    ``nn.init.zeros_(w)``, not of a method of an object such as ``ax.plot(x, y)``, nor of a builtin or
    display), every name passed as an argument."""
    names = set()
    base = _base_name(call.func)
    if isinstance(call.func, ast.Attribute) and base and base not in imported:
        names.add(base)
    elif base and (base in imported or isinstance(call.func, ast.Name)) and base not in PURE_CALLS:
        for arg in (*call.args, *(k.value for k in call.keywords)):
            while isinstance(arg, (ast.Attribute, ast.Subscript, ast.Starred)):  # f(a.x), f(a[k]), f(*a): a
                arg = arg.value
            if isinstance(arg, ast.Name) and arg.id not in imported:
                names.add(arg.id)
    return names


@dataclass
class Summary:
    """One top-level statement (or statements sharing a line) of a cell, for the backward walk."""

    lines: range
    defs: set[str] = field(default_factory=set)
    kills: set[str] = field(default_factory=set)
    mutates: set[str] = field(default_factory=set)
    uses: set[str] = field(default_factory=set)
    refs: set[str] = field(default_factory=set)  # every name it reads, for the function closure
    opaque: bool = False  # e.g. ``from x import *``: it may bind anything


class _TopLevel:
    """Summarize top-level statements in execution order, tracking which names are surely bound so far."""

    def __init__(self, summary: Summary, imported: set[str], scopes: dict[str, Scope]):
        self.s = summary
        self.imported = imported
        self.scopes = scopes

    def define(self, name: str, scope: Scope) -> None:
        """A function or class bound to ``name``; several definitions of one name count together."""
        old = self.scopes.get(name, Scope())
        self.scopes[name] = Scope(old.free | scope.free, old.mutates | scope.mutates)

    # expressions ------------------------------------------------------------------------------------------------
    def expr(self, node: ast.AST | None, bound: set[str]) -> None:
        if node is None:
            return
        walrus = set()
        for n in self._walk_outside_scopes(node):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
                self.read(n.id, bound)
            elif isinstance(n, ast.NamedExpr):
                walrus |= _target_names(n.target)
            elif isinstance(n, _SCOPES):
                scope = _scope(n, self.imported)
                for name in scope.free:
                    self.read(name, bound)
                self.s.mutates |= scope.mutates
        self.s.defs |= walrus
        bound |= walrus

    def _walk_outside_scopes(self, node: ast.AST):
        """Nodes of an expression, not descending into lambdas and comprehensions (yielded, for their free names)."""
        todo = [node]
        while todo:
            n = todo.pop()
            yield n
            if isinstance(n, _SCOPES):
                if isinstance(n, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                    todo.append(n.generators[0].iter)  # evaluated outside the comprehension
                elif isinstance(n, ast.Lambda):
                    todo += [*n.args.defaults, *(d for d in n.args.kw_defaults if d is not None)]
                continue
            todo.extend(ast.iter_child_nodes(n))

    def read(self, name: str, bound: set[str]) -> None:
        self.s.refs.add(name)
        if name not in bound:
            self.s.uses.add(name)

    # binding targets -------------------------------------------------------------------------------------------
    def bind(self, target: ast.AST, bound: set[str]) -> None:
        if isinstance(target, ast.Name):
            self.s.defs.add(target.id)
            bound.add(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for e in target.elts:
                self.bind(e, bound)
        elif isinstance(target, ast.Starred):
            self.bind(target.value, bound)
        elif isinstance(target, (ast.Subscript, ast.Attribute)):  # a[k] = v, a.x = v: reads and changes a
            self.expr(target.value, bound)
            if isinstance(target, ast.Subscript):
                self.expr(target.slice, bound)
            base = _base_name(target)
            if base:
                self.s.mutates.add(base)

    # statements ------------------------------------------------------------------------------------------------
    def block(self, stmts: list[ast.stmt], bound: set[str]) -> None:
        for stmt in stmts:
            self.stmt(stmt, bound)

    def stmt(self, node: ast.stmt, bound: set[str]) -> None:
        s = self.s
        if isinstance(node, ast.Assign):
            self.expr(node.value, bound)
            for t in node.targets:
                self.bind(t, bound)
            if isinstance(node.value, ast.Lambda):  # f = lambda ...: referenced later like a def
                for t in node.targets:
                    for name in _target_names(t):
                        self.define(name, _scope(node.value, self.imported))
        elif isinstance(node, ast.AnnAssign):
            self.expr(node.annotation, bound)
            if node.value is not None:
                self.expr(node.value, bound)
                self.bind(node.target, bound)
        elif isinstance(node, ast.AugAssign):
            self.expr(node.value, bound)
            if isinstance(node.target, ast.Name):  # x += v reads x, and changes it in place for a list
                self.read(node.target.id, bound)
                s.mutates.add(node.target.id)
                s.defs.add(node.target.id)
            else:
                self.bind(node.target, bound)
        elif isinstance(node, ast.Delete):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    self.read(t.id, bound)
                    s.mutates.add(t.id)
                else:
                    self.bind(t, bound)
        elif isinstance(node, ast.Expr):
            self.expr(node.value, bound)
            value = node.value.value if isinstance(node.value, ast.Await) else node.value
            if isinstance(value, ast.Call):
                s.mutates |= _call_mutates(value, self.imported)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            self.expr(node.iter, bound)
            inside = set(bound)
            self.bind(node.target, inside)  # the loop variable is the loop's own: not a use
            self.block(node.body, inside)
            self.block(node.orelse, set(bound))
            bound |= inside  # optimistic: names the body binds count as bound after the loop
        elif isinstance(node, ast.While):
            self.expr(node.test, bound)
            inside = set(bound)
            self.block(node.body, inside)
            self.block(node.orelse, set(bound))
            bound |= inside
        elif isinstance(node, ast.If):
            self.expr(node.test, bound)
            yes, no = set(bound), set(bound)
            self.block(node.body, yes)
            self.block(node.orelse, no)
            bound |= yes & no
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.expr(item.context_expr, bound)
                if item.optional_vars is not None:
                    self.bind(item.optional_vars, bound)
            self.block(node.body, bound)
        elif isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            body = set(bound)
            self.block(node.body, body)
            self.block(node.orelse, body)
            after = body
            for handler in node.handlers:
                h = set(bound)
                self.expr(handler.type, h)
                if handler.name:
                    s.defs.add(handler.name)
                    h.add(handler.name)
                self.block(handler.body, h)
                after &= h
            self.block(node.finalbody, bound)
            bound |= after
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            a = None if isinstance(node, ast.ClassDef) else node.args
            outer = [*node.decorator_list]
            if a is None:
                outer += [*node.bases, *(k.value for k in node.keywords)]
            else:
                outer += [*a.defaults, *(d for d in a.kw_defaults if d is not None), node.returns]
                outer += [x.annotation for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x is not None]
            for o in outer:
                self.expr(o, bound)
            scope = _scope(node, self.imported)
            self.define(node.name, scope)
            for name in scope.free:
                self.read(name, bound)
            s.defs.add(node.name)
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    s.opaque = True
                    continue
                name = (alias.asname or alias.name).split(".")[0]
                s.defs.add(name)
                bound.add(name)
        elif isinstance(node, ast.Match):
            self.expr(node.subject, bound)
            after = None
            for case in node.cases:
                c = set(bound) | _pattern_names(case.pattern)
                s.defs |= _pattern_names(case.pattern)
                for n in ast.walk(case.pattern):
                    if isinstance(n, ast.expr):
                        self.expr(n, c)
                self.expr(case.guard, c)
                self.block(case.body, c)
                after = c if after is None else after & c
            bound |= after or set()
        elif isinstance(node, (ast.Global, ast.Nonlocal, ast.Pass, ast.Break, ast.Continue)):
            pass
        else:  # assert, raise, return, ...: read everything in it
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self.expr(child, bound)
                elif isinstance(child, ast.stmt):
                    self.stmt(child, bound)


MAGIC = re.compile(r"^(?P<indent>\s*)[%!]")


def _parse(source: str) -> tuple[ast.Module | None, bool]:
    """The cell's syntax tree and whether it is plain Python; IPython magic lines read as ``pass`` otherwise."""
    try:
        return ast.parse(source), True
    except SyntaxError:
        pass
    try:
        return ast.parse("\n".join(MAGIC.sub(r"\g<indent>pass  #", line) for line in source.splitlines())), False
    except SyntaxError:
        return None, False


def _summaries(tree: ast.Module, imported: set[str], scopes: dict[str, Scope], whole: bool = False) -> list[Summary]:
    """Summaries of a cell's top-level statements (statements sharing a line are one), or of the ``whole`` cell."""
    groups: list[list[ast.stmt]] = []
    spans: list[list[int]] = []
    for stmt in tree.body:
        if whole and groups:
            groups[-1].append(stmt)
            spans[-1][1] = stmt.end_lineno
            continue
        first = min([stmt.lineno, *(d.lineno for d in getattr(stmt, "decorator_list", []))])
        if groups and first <= spans[-1][1]:
            groups[-1].append(stmt)
            spans[-1][1] = max(spans[-1][1], stmt.end_lineno)
        else:
            groups.append([stmt])
            spans.append([first, stmt.end_lineno])
    out = []
    for group, (first, last) in zip(groups, spans, strict=True):
        summary = Summary(lines=range(first - 1, last))
        bound: set[str] = set()
        _TopLevel(summary, imported, scopes).block(group, bound)
        summary.kills = bound - summary.mutates
        out.append(summary)
    return out


def slice_cells(sources: list[str], target: int) -> list[tuple[int, str]]:
    """The cells to execute so that ``sources[target]`` runs on exactly what it needs: ``(index, source)`` pairs.

    ``sources`` are a notebook's code cells in order; ``sources[0]`` (the setup cell) and ``sources[target]`` run
    whole, and so does any cell that is not plain Python (IPython magics), every name in it counting as read.
    From the cells in between only the needed top-level statements are kept, in their order; every other line
    is blanked, so that line numbers stay those of the chapter; a cell with nothing needed is left out.
    """
    sources = sources[: target + 1]
    parsed = [_parse(source) for source in sources]
    imported = {(a.asname or a.name).split(".")[0] for tree, _ in parsed if tree for n in ast.walk(tree)
                if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    scopes: dict[str, Scope] = {}
    units: list[tuple[int, Summary]] = []
    for i, (source, (tree, plain)) in enumerate(zip(sources, parsed, strict=True)):
        run_whole = not plain or i in (0, target)
        summaries = _summaries(tree, imported, scopes, whole=run_whole) if tree else []
        if not run_whole:
            units.extend((i, s) for s in summaries)
        else:  # it may bind or change anything; a cell that is not Python needs whatever it names
            whole = Summary(lines=range(len(source.splitlines())), opaque=True)
            whole.refs = set(re.findall(r"[A-Za-z_]\w*", source))
            if plain and summaries:
                whole.refs, whole.uses, whole.kills = summaries[0].refs, summaries[0].uses, summaries[0].kills
            elif not plain:
                whole.uses = set(whole.refs)
            units.append((i, whole))

    reach = _closure(scopes)
    for _, s in units:  # naming a function reads its free names, and may change the globals it changes
        for name in list(s.refs):
            if name in reach:
                s.uses |= set().union(*(scopes[f].free for f in reach[name]))
                s.mutates |= set().union(*(scopes[f].mutates for f in reach[name]))

    needed: set[str] = set()
    kept: dict[int, set[int]] = {}
    for cell, s in reversed(units):
        if s.opaque or (s.defs | s.mutates) & needed:
            kept.setdefault(cell, set()).update(s.lines)
            needed = (needed - s.kills) | s.uses
    out = []
    for i, source in enumerate(sources):
        if i in kept:
            lines = source.splitlines()
            out.append((i, "\n".join(line if n in kept[i] else "" for n, line in enumerate(lines)).rstrip("\n")))
    return out


def _closure(scopes: dict[str, Scope]) -> dict[str, set[str]]:
    """For each function or class name, it and every function or class it reaches through free names."""
    out = {}
    for name in scopes:
        seen, todo = {name}, [name]
        while todo:
            for free in scopes[todo.pop()].free:
                if free in scopes and free not in seen:
                    seen.add(free)
                    todo.append(free)
        out[name] = seen
    return out

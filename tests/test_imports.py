"""
The project's modules import one another one way: no cycle, counting the imports written inside
functions (a cycle hidden there still ties two modules together), and the core (the model and the
sampling rule) never imports the CPU speed layer (cpu/) at module level.
"""
import ast
import glob
import os

from helpers import ROOT

CORE = ('gpt_config', 'model', 'generate', 'draws')


def project_modules():
    """{module name: path} of the repository's own Python modules: the top-level files and cpu/."""
    paths = glob.glob(os.path.join(ROOT, '*.py')) + glob.glob(os.path.join(ROOT, 'cpu', '*.py'))
    names = {os.path.relpath(p, ROOT)[:-3].replace(os.sep, '.'): p for p in paths}
    names.pop('cpu.__init__', None)
    return names


def imports_of(path, modules, top_level_only=False):
    """The project modules (names in modules) that the file at path imports, at module level only
    if top_level_only, else anywhere in it."""
    tree = ast.parse(open(path, encoding='utf-8').read())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f'{node.module}.{a.name}' for a in node.names}
    return found & set(modules)


def a_cycle(graph):
    """One cycle of graph ({node: set of nodes}) as a list of nodes, or None."""
    state, stack = {}, []

    def visit(n):
        state[n] = 'open'
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 'open':
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        state[n] = 'done'
        stack.pop()
        return None
    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_project_imports_one_way():
    modules = project_modules()
    assert {'model', 'load', 'gpt_config', 'cpu.speed'} <= set(modules)
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    assert 'load' in graph['model'] and 'gpt_config' in graph['load']  # the check reads both kinds of import
    assert a_cycle(graph) is None, ' -> '.join(a_cycle(graph))


def test_the_cycle_check_finds_a_cycle():
    assert a_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert a_cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None


def test_the_core_never_imports_the_cpu_layer_at_module_level():
    modules = project_modules()
    for name in CORE:
        seen, todo = set(), [name]
        while todo:  # what importing the module imports, transitively
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += imports_of(modules[m], modules, top_level_only=True)
        assert not [m for m in seen if m.startswith('cpu.')], (name, sorted(seen))
